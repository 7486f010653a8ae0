#!/usr/bin/env bash
# The test command: every unit, property, integration and crash test.
# Device tests that need a loop device skip with a message when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --locked --all-targets
cargo test --locked -- --test-threads=2
