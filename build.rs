//! Compiles the c10d shim (csrc/) against the libtorch that torch-sys linked, with that
//! libtorch's C++ ABI, and gives every binary a RUNPATH to it.

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
        .file("csrc/c10d_shim.cpp");
    if let Some(dir) = env::var_os("GLOO_INCLUDE_DIR") {
        build.include(dir);
    } else if !Path::new("/usr/include/gloo/config.h").exists() {
        panic!(
            "Gloo headers not found: install Debian's libgloo-dev (apt-get install libgloo-dev) \
             or set GLOO_INCLUDE_DIR"
        );
    }
    if env::var_os("CARGO_FEATURE_NCCL").is_some() {
        build.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        for dir in cuda_include_dirs(&root) {
            build.include(dir);
        }
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
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

/// CUDA headers: `CUDA_HOME/include` when set, else the pip `nvidia-*` packages beside torch.
fn cuda_include_dirs(torch_root: &Path) -> Vec<PathBuf> {
    if let Some(home) = env::var_os("CUDA_HOME") {
        return vec![PathBuf::from(home).join("include")];
    }
    let nvidia = torch_root.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&nvidia)
        .unwrap_or_else(|e| {
            panic!("feature `nccl` needs CUDA headers: set CUDA_HOME or pip-install nvidia-cuda-nvcc-cu12 and nvidia-cuda-cccl-cu12 ({}: {e})", nvidia.display())
        })
        .filter_map(|entry| Some(entry.ok()?.path().join("include")))
        .filter(|dir| dir.is_dir())
        .collect();
    dirs.sort();
    dirs
}
