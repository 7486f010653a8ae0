//! `shardblk-lstm`: the `shardblk` command line with the LSTM backend
//! registered. `shardblk` hands it the commands that need the LSTM; it can
//! also be run directly.

fn main() {
    shardblk_lstm::register();
    shardblk::cli::main()
}
