//! The file route source: what a refresh keeps, replaces and drops.

use std::path::PathBuf;

use sluice::control::files::FileSource;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n"
    )
}

fn names(source: &FileSource) -> Vec<String> {
    let mut n: Vec<String> = source
        .objects()
        .services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    n.sort();
    n
}

fn write(dir: &std::path::Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[test]
fn a_broken_file_keeps_its_previous_objects_and_others_follow_their_files() {
    let dir = temp_dir("keep");
    write(&dir, "a.yaml", &service("a1"));
    write(&dir, "b.yml", &service("b1"));
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    let mut source = FileSource::new(&dir);
    assert!(source.refresh().is_empty());
    assert_eq!(names(&source), ["a1", "b1"]);

    // a.yaml breaks (line 3), b.yml changes: a keeps a1, b follows.
    write(
        &dir,
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
    );
    write(&dir, "b.yml", &service("b2"));
    let errors = source.refresh();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].file.ends_with("a.yaml"));
    assert!(errors[0].line >= 3, "{}", errors[0]);
    assert_eq!(names(&source), ["a1", "b2"]);

    // Fixed: the new objects replace the kept ones. Deleted: its objects go.
    write(&dir, "a.yaml", &service("a2"));
    std::fs::remove_file(dir.join("b.yml")).unwrap();
    assert!(source.refresh().is_empty());
    assert_eq!(names(&source), ["a2"]);

    // A new file appears.
    write(&dir, "c.yaml", &service("c1"));
    assert!(source.refresh().is_empty());
    assert_eq!(names(&source), ["a2", "c1"]);
}

/// The watcher publishes a snapshot only when a refresh changed something: the generation
/// moves on a changed, new or deleted file, and not on a temporary file, a non-manifest or
/// a broken rewrite (which keeps the previous objects).
#[test]
fn the_generation_moves_only_when_the_objects_change() {
    let dir = temp_dir("generation");
    write(&dir, "a.yaml", &service("a1"));
    let mut source = FileSource::new(&dir);
    assert!(source.refresh().is_empty());
    let g = source.generation();

    std::fs::write(dir.join(".a.yaml.tmp"), service("a2")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    assert!(source.refresh().is_empty());
    assert_eq!(source.generation(), g, "nothing that counts changed");

    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
    )
    .unwrap();
    assert_eq!(source.refresh().len(), 1);
    assert_eq!(source.generation(), g, "a broken rewrite keeps the objects");

    write(&dir, "a.yaml", &service("a2"));
    assert!(source.refresh().is_empty());
    assert!(source.generation() > g);
    let g = source.generation();

    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    assert!(source.refresh().is_empty());
    assert!(source.generation() > g);
}
