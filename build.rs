//! Compiles the C++ shim (csrc/: c10d's stores and process groups, the autograd hooks, what
//! else of libtorch tch does not bind) against the libtorch that torch-sys linked, with that
//! libtorch's C++ ABI; links libtorch_cuda and compiles ProcessGroupNCCL where CUDA is there;
//! gives every binary a RUNPATH to libtorch; and sets the cfgs that turn tests needing the real
//! data, root or podman into reported ignores where those are missing.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let lib = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB; is torch-sys a direct dependency?"),
    );
    let root = lib.parent().expect("libtorch lib dir has a parent").to_path_buf();
    let abi = cxx11_abi(&lib.join("libc10.so"));

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", abi)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .file("csrc/torch_shim.cpp")
        .file("csrc/c10d_shim.cpp");
    if let Some(dir) = env::var_os("GLOO_INCLUDE_DIR") {
        build.include(dir);
    } else if !Path::new("/usr/include/gloo/config.h").exists() {
        panic!(
            "Gloo headers not found: install Debian's libgloo-dev (apt-get install libgloo-dev) \
             or set GLOO_INCLUDE_DIR"
        );
    }
    // A CUDA libtorch: link libtorch_cuda whether or not the binary references a symbol of it
    // (with --as-needed the linker would drop it and CUDA would silently never turn on), and
    // compile ProcessGroupNCCL whenever the CUDA and NCCL headers are at hand.
    let cuda = lib.join("libtorch_cuda.so").is_file();
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
    let nccl = match (cuda, env::var("MEDBERT_NCCL").as_deref()) {
        (false, _) => Err("this libtorch has no CUDA (libtorch_cuda.so)".to_string()),
        (true, Ok("0")) => Err("MEDBERT_NCCL=0 at build time".to_string()),
        (true, _) => cuda_include_dirs(&root),
    };
    match &nccl {
        Ok(dirs) => {
            build.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
            for dir in dirs {
                build.include(dir);
            }
            println!("cargo:rustc-env=MEDBERT_NCCL_MISSING=");
        }
        Err(why) => {
            println!("cargo:warning=ProcessGroupNCCL not compiled: {why}");
            println!("cargo:rustc-env=MEDBERT_NCCL_MISSING={why}");
        }
    }
    build.compile("medbert_c10d");

    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=MEDBERT_LIBTORCH_LIB={}", lib.display());
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=MEDBERT_NCCL");
    // Tests that need the real MedMCQA data are compiled as ignored (with the reason) when
    // MEDMCQA_DIR is not set, so `cargo test` reports them instead of passing them silently.
    println!("cargo:rustc-check-cfg=cfg(medmcqa_dir)");
    println!("cargo:rerun-if-env-changed=MEDMCQA_DIR");
    if env::var_os("MEDMCQA_DIR").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=medmcqa_dir");
    }
    // Tests that need root (network and mount namespaces) likewise: compiled as ignored when the
    // build does not run as root; built as root (as CI is) they run, and fail if they cannot.
    println!("cargo:rustc-check-cfg=cfg(as_root)");
    if nix::unistd::geteuid().is_root() {
        println!("cargo:rustc-cfg=as_root");
    }
    // The image build (scripts/docker-check.sh) runs where podman and mmdebstrap are installed
    // (`scripts/setup.sh --test` installs them as root), else is reported as ignored. Its
    // podman-compose comes with the tests' Python references, which pip may still be installing
    // while this runs: the check itself fails, naming it, where it is missing.
    println!("cargo:rustc-check-cfg=cfg(podman)");
    let on_path = |tool: &str| {
        env::var_os("PATH").is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
    };
    if ["podman", "mmdebstrap"].iter().all(|t| on_path(t)) {
        println!("cargo:rustc-cfg=podman");
    }
}

/// "1" when libc10 exports its assert helper with `std::__cxx11::string`, "0" for the old ABI.
fn cxx11_abi(libc10: &Path) -> &'static str {
    let bytes =
        fs::read(libc10).unwrap_or_else(|e| panic!("cannot read {} to detect the C++ ABI: {e}", libc10.display()));
    let needle = b"torchInternalAssertFail";
    let mut seen = false;
    for start in 0..bytes.len().saturating_sub(needle.len()) {
        if &bytes[start..start + needle.len()] != needle {
            continue;
        }
        let end = bytes[start..].iter().position(|&b| b == 0).map_or(bytes.len(), |n| start + n);
        if bytes[start..end].windows(7).any(|w| w == b"__cxx11") {
            return "1";
        }
        seen = true;
    }
    assert!(seen, "no torchInternalAssertFail symbol in {}: is this libtorch?", libc10.display());
    "0"
}

/// CUDA and NCCL headers: `CUDA_HOME/include` when set, else the pip `nvidia-*` packages
/// beside torch (`nvidia-cuda-crt`, `nvidia-cuda-cccl` and torch's own `nvidia-nccl-cu13`).
fn cuda_include_dirs(torch_root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut dirs = match env::var_os("CUDA_HOME") {
        Some(home) => vec![PathBuf::from(home).join("include")],
        None => Vec::new(),
    };
    let nvidia = torch_root.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let mut pip: Vec<PathBuf> = fs::read_dir(&nvidia)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path().join("include"))).filter(|d| d.is_dir()).collect())
        .unwrap_or_default();
    pip.sort();
    dirs.extend(pip);
    let has = |file: &str| dirs.iter().any(|d| d.join(file).is_file());
    let missing: Vec<&str> =
        ["cuda_runtime_api.h", "crt/host_defines.h", "nccl.h"].into_iter().filter(|f| !has(f)).collect();
    match missing.is_empty() {
        true => Ok(dirs),
        false => Err(format!(
            "CUDA headers not found ({}): pip-install nvidia-cuda-crt and nvidia-cuda-cccl beside torch \
             (scripts/setup.sh does) or set CUDA_HOME",
            missing.join(", ")
        )),
    }
}
