//! Times one full compile of a manifests directory: `cargo run --release --example
//! compile_time -- DIR`.
#![allow(clippy::disallowed_methods)]

fn main() {
    let dir = std::env::args().nth(1).expect("usage: compile_time DIR");
    let mut source = sluice::control::files::FileSource::new(std::path::Path::new(&dir));
    let errors = source.refresh();
    assert!(errors.is_empty(), "{errors:?}");
    let objects = source.objects();
    let opts = sluice::control::compile::CompileOptions::default();
    for round in 0..3 {
        let t = std::time::Instant::now();
        let c = sluice::control::compile::compile(&objects, &opts, round);
        let compiled = t.elapsed();
        let t = std::time::Instant::now();
        drop(c);
        println!("compile {compiled:?}, drop {:?}", t.elapsed());
    }
}
