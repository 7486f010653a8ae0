//! The `shardblk` command: the command line of [`shardblk::cli`], without
//! libtorch (commands that need the LSTM run `shardblk-lstm`).

fn main() {
    shardblk::cli::main()
}
