//! Times one full compile of a manifests directory, and (with a second argument) one
//! incremental change: `cargo run --release --example compile_time -- DIR [FILE NEW]`
//! replaces DIR/FILE with the contents of NEW and times each step of applying it.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::Instant;

use sluice::control::compile::{CompileOptions, compile};
use sluice::control::files::FileSource;
use sluice::control::incremental::Incremental;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: compile_time DIR [FILE NEW_CONTENTS]");
    let mut source = FileSource::new(Path::new(&dir));
    let errors = source.refresh();
    assert!(errors.is_empty(), "{errors:?}");
    let objects = source.objects();
    let opts = CompileOptions::default();
    for round in 0..3 {
        let t = Instant::now();
        let c = compile(&objects, &opts, round);
        let compiled = t.elapsed();
        let t = Instant::now();
        drop(c);
        println!("full compile {compiled:?}, drop {:?}", t.elapsed());
    }
    let (Some(file), Some(new)) = (args.next(), args.next()) else {
        return;
    };
    let (mut inc, _) = Incremental::new(&objects, opts, 1);
    let target = Path::new(&dir).join(file);
    let original = std::fs::read_to_string(&target).expect("FILE is in DIR");
    let replacement = std::fs::read_to_string(new).expect("NEW is readable");
    for (round, text) in [&replacement, &original, &replacement]
        .into_iter()
        .enumerate()
    {
        let tmp = target.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        let t = Instant::now();
        let errors = source.refresh();
        assert!(errors.is_empty(), "{errors:?}");
        let refresh = t.elapsed();
        let t = Instant::now();
        let objects = source.objects();
        let collect = t.elapsed();
        let t = Instant::now();
        let c = inc.update(&objects, round as u64 + 2);
        let update = t.elapsed();
        println!(
            "change {round}: re-read {refresh:?}, collect objects {collect:?}, incremental compile \
             {update:?} (overlay {} hosts, {} diagnostics)",
            c.snapshot.table.overlay_len(),
            c.diagnostics.len()
        );
    }
}
