//! The posthold binary: parse, dispatch, exit. Everything else is in the
//! library so that tests can call it.

fn main() {
    std::process::exit(posthold::cmd::main_with_args(std::env::args_os()));
}
