// tch sets no RPATH: bake the libtorch directory that torch-sys linked against into our binaries,
// so `target/release/eio` runs without LD_LIBRARY_PATH. Compiles csrc/shim.cpp (the libtorch
// entry points tch does not bind) against that libtorch's headers. Also records the git revision.
fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    let dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys passes its libtorch directory (DEP_TCH_LIBTORCH_LIB)");
    let include = std::path::Path::new(&dir).join("../include");
    let mut build = cc::Build::new();
    // CUDA graphs (csrc/shim.cpp) need libtorch_cuda and the CUDA runtime headers; without them
    // the shim's graph functions return an error and eio runs every step eagerly.
    if let Some(cuda) = cuda_include(&dir) {
        build.include(cuda).define("EIO_CUDA", None);
    }
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .file("csrc/shim.cpp")
        .compile("eio_shim");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    // Nothing in eio calls into libtorch_cuda directly, so `--as-needed` drops it and CUDA
    // then never registers: `Cuda::is_available()` is false even on a GPU machine. Keep it
    // when this libtorch has it (a CPU-only libtorch has none, and needs none).
    for lib in ["torch_cuda", "c10_cuda"] {
        if std::path::Path::new(&dir).join(format!("lib{lib}.so")).exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{lib},--as-needed");
        }
    }
    let rev = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EIO_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}

/// CUDA runtime headers for a libtorch with CUDA (`lib` = its `torch/lib`): the CUDA wheels of
/// PyPI torch carry them in `site-packages/nvidia/<toolkit>/include` (without the `crt/` part
/// `cuda_runtime.h` includes) and, whole, in triton's `backends/nvidia/include`.
fn cuda_include(lib: &str) -> Option<std::path::PathBuf> {
    let lib = std::path::Path::new(lib);
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let site = lib.join("../..");
    let mut dirs = vec![site.join("triton/backends/nvidia/include")];
    if let Ok(rd) = std::fs::read_dir(site.join("nvidia")) {
        let mut more: Vec<_> = rd.flatten().map(|e| e.path().join("include")).collect();
        more.sort();
        dirs.extend(more);
    }
    dirs.into_iter()
        .find(|inc| inc.join("cuda_runtime.h").exists() && inc.join("crt/host_config.h").exists())
}

/// The C++ ABI the libtorch was built with: what the Python torch that torch-sys used reports
/// (`LIBTORCH_USE_PYTORCH=1`), else 1 (every PyPI torch wheel since 2.7).
fn cxx11_abi() -> &'static str {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python".into());
    let out = std::process::Command::new(python)
        .args(["-c", "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"])
        .output();
    match out {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0" => "0",
        _ => "1",
    }
}
