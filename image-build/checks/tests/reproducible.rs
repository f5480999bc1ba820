//! Two builds from the same inputs give the same partition GUIDs, build id
//! and vm_config.json (SOURCE_DATE_EPOCH, GUIDs derived from a seed).

use std::process::Command;

use avf_image_checks::artefact::{need, out_dir};
use avf_image_checks::exec::{is_root, run};
use avf_image_checks::repo_root;

#[test]
fn rebuild_gives_same_guids_and_vm_config() {
    assert!(
        is_root(),
        "the rebuild needs root: run the tests as root (CI does)"
    );
    let first = need("debian", "efi");
    assert_ne!(out_dir(), std::path::PathBuf::new());
    let second_out = tempfile::tempdir().unwrap();
    // The same inputs as the first build: its date and build number (the
    // tree may have gained commits since). Same cache: stages 10-30 are
    // reused, 40-50 run again from scratch.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.dir.join("build-info.json")).unwrap())
            .unwrap();
    let sde = info["source_date_epoch"]
        .as_u64()
        .expect("build-info.json: source_date_epoch");
    let n = (first
        .info
        .build_id
        .parse::<u32>()
        .expect("build_id is an integer")
        - 5106)
        .to_string();
    let o = run(Command::new(repo_root().join("image-build/build-all.sh"))
        .args(["--base", "debian", "--layout", "efi"])
        .env("AVF_OUT", second_out.path())
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .env("AVF_BUILD_NUMBER", n))
    .unwrap();
    assert_eq!(o.code, Some(0), "rebuild failed: {}", o.last_err_line());
    let tarball = second_out.path().join("debian-efi/images.tar.gz");
    assert_eq!(
        o.stdout.lines().last().unwrap(),
        tarball.display().to_string(),
        "last stdout line is the tarball"
    );
    let read = |d: &std::path::Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let d2 = second_out.path().join("debian-efi");
    assert_eq!(
        read(&first.dir, "payload/vm_config.json"),
        read(&d2, "payload/vm_config.json")
    );
    assert_eq!(
        read(&first.dir, "payload/build_id"),
        read(&d2, "payload/build_id")
    );
    let info2: serde_json::Value = serde_json::from_str(&read(&d2, "build-info.json")).unwrap();
    for p in &first.info.partitions {
        let other = info2["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["label"] == p.label.as_str())
            .unwrap_or_else(|| panic!("partition {} missing in rebuild", p.label));
        assert_eq!(
            other["guid"],
            p.guid.as_str(),
            "{} guid differs between builds",
            p.label
        );
        assert_eq!(
            other["size_bytes"], p.size_bytes,
            "{} size differs",
            p.label
        );
    }
}
