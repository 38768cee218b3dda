//! The `sluice` binary: parse arguments, load config, start control, workers and admin.
//! (The engine and the CLI land with issue 3; until then this only reports that.)

fn main() {
    eprintln!("sluice: the data-plane engine is not built yet (see issue 3)");
    std::process::exit(2);
}
