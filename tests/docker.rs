//! The Docker image cannot be built here (no engine); what can be checked is checked: the
//! Dockerfile lints clean and builds through the script CI runs, whose binaries it copies.

mod common;

#[test]
fn the_dockerfile_lints_clean_and_uses_the_ci_build_script() {
    let dockerfile = common::manifest_dir().join("docker/Dockerfile");
    let hadolint = common::venv_python().with_file_name("hadolint");
    let out = std::process::Command::new(&hadolint).arg(&dockerfile).output().expect("run hadolint from the venv");
    assert!(out.status.success(), "hadolint:\n{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(text.contains("RUN scripts/setup.sh\n"), "the image must build with CI's script");
    for binary in ["medbert", "medbert-run"] {
        assert!(text.contains(&format!("target/release/{binary}")), "image lacks {binary}");
    }
    assert!(
        text.contains("cp -a --parents torch/lib nvidia/*/lib") && !text.contains("${SITE}/nvidia ${SITE}/nvidia"),
        "the runtime image takes the wheels' shared libraries only, not the CUDA headers"
    );
}
