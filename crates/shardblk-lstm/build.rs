//! Build script: links the libtorch that `tools/torch-setup.sh` installs.
//!
//! torch-sys links libtorch from `$LIBTORCH`
//! (`.venv/torch`, set in `.cargo/config.toml`). tch sets no rpath, so this
//! script adds one for libtorch's `lib/` and for the CUDA runtime libraries
//! that `libtorch_cpu.so` needs (`$SHARDBLK_NVIDIA_LIB`): binaries, tests and
//! benches then run without `LD_LIBRARY_PATH`, on the host and in the test VM
//! (which sees the host's root at the same paths).
//!
//! With the `cuda` feature it also force-links `libtorch_cuda.so`: nothing in
//! the binary references it directly, so the linker's `--as-needed` would drop
//! it and CUDA would be silently unavailable (tch-rs #980, #291).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=SHARDBLK_NVIDIA_LIB");
    let Some(libtorch) = env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!("cargo:warning=LIBTORCH is not set: run tools/torch-setup.sh");
        return;
    };
    let lib = libtorch.join("lib");
    let Ok(lib) = lib.canonicalize() else {
        println!(
            "cargo:warning={} not found: run tools/torch-setup.sh",
            lib.display()
        );
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if let Some(nv) = env::var_os("SHARDBLK_NVIDIA_LIB").map(PathBuf::from) {
        if let Ok(nv) = nv.canonicalize() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", nv.display());
        }
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}
