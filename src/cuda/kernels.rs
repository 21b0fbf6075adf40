//! The CUDA kernel sources and their NVRTC compilation.
//!
//! Kernels ship as CUDA C source (`kernels/*.cu`), embedded in the binary
//! with `include_str!` and compiled to PTX at run time by NVRTC, so building
//! the crate needs no CUDA toolkit. `kernels/common.cuh` is prepended to
//! every file (NVRTC has no include path to find it at run time).
//!
//! NVRTC is loaded dynamically by `cudarc` on first use. It looks the
//! library up by name through the normal dynamic-loader search (so
//! `LD_LIBRARY_PATH` decides), trying among others `libnvrtc.so` and
//! `libnvrtc.so.12`. The PyPI wheel `nvidia-cuda-nvrtc-cu12` ships
//! `site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12`; exporting that
//! directory in `LD_LIBRARY_PATH` is enough (its builtins library is found
//! through the `$ORIGIN` run path).

use crate::error::{Error, Result};
use std::ffi::{c_char, CStr, CString};

/// `kernels/common.cuh`: index helpers and block reductions, prepended to
/// every source before compiling.
pub const COMMON_HEADER: &str = include_str!("../../kernels/common.cuh");

/// Every kernel file, as `(file name, source)`, without the common header.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    (
        "elementwise.cu",
        include_str!("../../kernels/elementwise.cu"),
    ),
    ("reduce.cu", include_str!("../../kernels/reduce.cu")),
    ("matmul.cu", include_str!("../../kernels/matmul.cu")),
    ("conv.cu", include_str!("../../kernels/conv.cu")),
    ("pool.cu", include_str!("../../kernels/pool.cu")),
    ("loss.cu", include_str!("../../kernels/loss.cu")),
    ("optim.cu", include_str!("../../kernels/optim.cu")),
];

/// The source of one kernel file, by name (`"conv.cu"`).
pub fn source(file: &str) -> Result<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::UnknownName {
            kind: "kernel file",
            name: file.to_string(),
            expected: KERNEL_SOURCES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The names of the `extern "C" __global__` kernels a source defines, in
/// order of appearance. Used by tests (every kernel must appear as a PTX
/// `.entry`) and to check a launch names a kernel that exists.
pub fn kernel_names(src: &str) -> Vec<&str> {
    const MARK: &str = "extern \"C\" __global__ void ";
    let mut names = Vec::new();
    let mut rest = src;
    while let Some(pos) = rest.find(MARK) {
        rest = &rest[pos + MARK.len()..];
        // `void __launch_bounds__(256) name(` is the documented placement.
        if let Some(after) = rest.strip_prefix("__launch_bounds__(") {
            rest = after
                .find(')')
                .map_or("", |end| after[end + 1..].trim_start());
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            names.push(&rest[..end]);
        }
    }
    names
}

/// The file that defines a kernel, by kernel name.
pub fn file_of_kernel(kernel: &str) -> Result<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|(_, src)| kernel_names(src).contains(&kernel))
        .map(|(file, _)| *file)
        .ok_or_else(|| Error::UnknownName {
            kind: "CUDA kernel",
            name: kernel.to_string(),
            expected: "a kernel defined in kernels/*.cu".into(),
        })
}

/// PTX text produced by NVRTC for one kernel file.
#[derive(Clone, Debug)]
pub struct Ptx {
    /// The kernel file it came from (`"conv.cu"`).
    pub file: String,
    /// The architecture it was compiled for (`"sm_80"`).
    pub arch: String,
    /// The PTX assembly.
    pub text: String,
    /// NVRTC's log (warnings); empty when the compile was clean.
    pub log: String,
}

impl Ptx {
    /// True when the PTX defines a kernel entry point with this name.
    pub fn has_entry(&self, kernel: &str) -> bool {
        self.entry_param_bytes(kernel).is_some()
    }

    /// Total size in bytes of the `.param` arguments of `.entry kernel`, as
    /// NVRTC laid them out. Our kernels take one struct, so this is the
    /// struct's size on the device; tests compare it with the `#[repr(C)]`
    /// mirror. `None` when there is no such entry.
    pub fn entry_param_bytes(&self, kernel: &str) -> Option<usize> {
        let head = format!(".entry {kernel}(");
        let start = self.text.find(&head)? + head.len();
        let body = &self.text[start..];
        let params = &body[..body.find(')')?];
        // Each parameter reads `.param .align A .b8 name[BYTES]` (a struct)
        // or `.param .u64 name` (a scalar).
        let mut total = 0;
        for decl in params.split(',') {
            let decl = decl.trim();
            if decl.is_empty() {
                continue;
            }
            if let (Some(l), Some(r)) = (decl.rfind('['), decl.rfind(']')) {
                total += decl.get(l + 1..r)?.trim().parse::<usize>().ok()?;
            } else {
                let ty = decl.split_whitespace().nth(1)?;
                total += ty.get(2..)?.parse::<usize>().ok()? / 8;
            }
        }
        Some(total)
    }
}

/// The version of the NVRTC library, `(major, minor)`; an error when the
/// library cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    guard("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: plain out-parameters.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| Error::Cuda(format!("nvrtcVersion failed: {e:?}")))?;
        Ok((major, minor))
    })
}

/// The real architectures (`80` for sm_80, ...) this NVRTC can compile for.
pub fn nvrtc_supported_archs() -> Result<Vec<i32>> {
    ensure_nvrtc()?;
    guard("nvrtcGetSupportedArchs", || {
        use cudarc::nvrtc::sys;
        let mut n = 0;
        // SAFETY: out-parameter; then a buffer of exactly n ints.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
            .result()
            .map_err(|e| Error::Cuda(format!("nvrtcGetNumSupportedArchs failed: {e:?}")))?;
        let mut archs = vec![0; n.max(0) as usize];
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .map_err(|e| Error::Cuda(format!("nvrtcGetSupportedArchs failed: {e:?}")))?;
        Ok(archs)
    })
}

/// True when the NVRTC shared library can be loaded.
pub fn nvrtc_available() -> bool {
    ensure_nvrtc().is_ok()
}

/// Errors (rather than letting cudarc panic later) when NVRTC is missing.
fn ensure_nvrtc() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Cuda(
            "NVRTC not found (libnvrtc.so / libnvrtc.so.12 not on the library path); \
             install the CUDA toolkit and add its lib64 to LD_LIBRARY_PATH (CUDA 12 or \
             13: its libnvrtc.so link is enough), or `pip install nvidia-cuda-nvrtc-cu12` \
             and add site-packages/nvidia/cuda_nvrtc/lib"
                .into(),
        ))
    }
}

/// Runs a call into a dynamically loaded CUDA library, turning a panic
/// inside cudarc's loader (a symbol missing from an old library) into an
/// error.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Error::Cuda(format!(
            "{what}: CUDA library call failed: {msg}"
        )))
    })
}

/// The full text NVRTC compiles for a kernel file: the common header, then
/// the file (a `#line` directive keeps NVRTC's line numbers those of the file).
pub fn full_source(file: &str) -> Result<String> {
    let src = source(file)?;
    Ok(format!("{COMMON_HEADER}\n#line 1 \"{file}\"\n{src}"))
}

/// Compiles one kernel file (`"conv.cu"`) to PTX for an architecture
/// (`"sm_80"`, `"sm_90"`; `"compute_80"` is accepted too).
///
/// PTX is generated for the matching *virtual* architecture (compute_XX),
/// which the driver JIT-compiles for the actual GPU on load, so PTX built
/// for sm_80 also runs on later GPUs. On failure the error names the file
/// and carries NVRTC's log.
pub fn compile_ptx(file: &str, arch: &str) -> Result<Ptx> {
    let number = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            Error::invalid(
                "compile_ptx",
                format!("architecture '{arch}' is not of the form sm_XY or compute_XY"),
            )
        })?;
    let full = full_source(file)?;
    compile_source(file, &full, number)
}

/// Compiles CUDA source text (`name` labels errors; `arch_number` is `"80"`
/// for sm_80) to PTX. [`compile_ptx`] is this plus the common header.
pub fn compile_source(file: &str, full: &str, arch_number: &str) -> Result<Ptx> {
    let arch = format!("sm_{arch_number}");
    let target = format!("compute_{arch_number}");
    let (text, log) = nvrtc_compile(file, full, &target, |prog| {
        // SAFETY: prog compiled successfully and is still alive.
        unsafe { cudarc::nvrtc::result::get_ptx(prog) }
            .map(|raw| c_chars_to_string(&raw))
            .map_err(|e| Error::Cuda(format!("{file}: nvrtcGetPTX failed: {e:?}")))
    })?;
    Ok(Ptx {
        file: file.to_string(),
        arch,
        text,
        log,
    })
}

/// Compiles one kernel file to machine code (CUBIN) for a real architecture
/// (`"sm_80"`, `"sm_90"`) and returns its size in bytes.
///
/// The GPU path loads PTX ([`compile_ptx`]), which NVRTC writes without
/// assembling it: inline PTX (`asm`, as the tensor-core `mma.sync` in
/// common.cuh) is copied through unchecked, and the driver would only
/// reject a bad instruction when it loads the module on a GPU. Going on to
/// CUBIN runs NVRTC's PTX assembler, so CI catches such mistakes without a
/// GPU.
pub fn compile_cubin_size(file: &str, arch: &str) -> Result<usize> {
    let number = real_arch_number("compile_cubin_size", arch)?;
    let full = full_source(file)?;
    compile_source_cubin_size(file, &full, number)
}

/// The number of a real architecture `sm_XY` (machine code needs one; a
/// `compute_XY` is only a PTX target), or an error naming `what` asked.
fn real_arch_number<'a>(what: &'static str, arch: &'a str) -> Result<&'a str> {
    arch.strip_prefix("sm_")
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            Error::invalid(
                what,
                format!("architecture '{arch}' is not of the form sm_XY"),
            )
        })
}

/// [`compile_cubin_size`] of CUDA source text (`arch_number` is `"80"` for
/// sm_80), as [`compile_source`] is [`compile_ptx`]'s.
pub fn compile_source_cubin_size(file: &str, full: &str, arch_number: &str) -> Result<usize> {
    let target = format!("sm_{arch_number}");
    let (size, _log) = nvrtc_compile(file, full, &target, |prog| {
        let mut size = 0usize;
        // SAFETY: prog compiled successfully; size is a valid out-pointer.
        unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map(|()| size)
            .map_err(|e| Error::Cuda(format!("{file}: nvrtcGetCUBINSize failed: {e:?}")))
    })?;
    Ok(size)
}

/// What ptxas reports about one kernel's resources ([`ptxas_resources`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Kernel name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes stored to local memory because the registers ran out.
    pub spill_store_bytes: u32,
    /// Bytes loaded back from those spills.
    pub spill_load_bytes: u32,
}

/// Assembles one kernel file for a real architecture (`"sm_90"`) with
/// ptxas' verbose report and returns each kernel's registers and spills,
/// sorted by kernel name. Register count decides how many blocks fit on an
/// SM, and a spill puts local-memory traffic into a loop: both change a
/// kernel's speed without changing its results, so no test on results sees
/// them; this lets CI watch them without a GPU.
pub fn ptxas_resources(file: &str, arch: &str) -> Result<Vec<KernelResources>> {
    let target = format!("sm_{}", real_arch_number("ptxas_resources", arch)?);
    let full = full_source(file)?;
    let ((), log) = nvrtc_compile_with(file, &full, &target, &["-Xptxas", "-v"], |_| Ok(()))?;
    let mut out = parse_ptxas_report(&log)
        .map_err(|msg| Error::Cuda(format!("{file}: unexpected ptxas report ({msg}):\n{log}")))?;
    out.sort_by(|a, b| a.kernel.cmp(&b.kernel));
    Ok(out)
}

/// Reads ptxas' `-v` lines: "Compiling entry function 'K'", then
/// "N bytes spill stores, M bytes spill loads" and "Used R registers".
fn parse_ptxas_report(log: &str) -> std::result::Result<Vec<KernelResources>, String> {
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let end = line.find(what)?;
        line[..end].split_whitespace().last()?.parse().ok()
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(KernelResources {
                kernel: name.to_string(),
                registers: 0,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("spill stores") {
            k.spill_store_bytes = number_before(line, "bytes spill stores")
                .ok_or_else(|| format!("cannot read '{line}'"))?;
            k.spill_load_bytes = number_before(line, "bytes spill loads")
                .ok_or_else(|| format!("cannot read '{line}'"))?;
        } else if line.contains("Used ") && line.contains(" registers") {
            k.registers =
                number_before(line, " registers").ok_or_else(|| format!("cannot read '{line}'"))?;
        }
    }
    if out.is_empty() {
        return Err("no 'Compiling entry function' line".into());
    }
    if let Some(k) = out.iter().find(|k| k.registers == 0) {
        return Err(format!("no register count for {}", k.kernel));
    }
    Ok(out)
}

/// One NVRTC compile of `full` for `--gpu-architecture=target`
/// (`compute_80` gives PTX only, `sm_80` also assembles CUBIN); `output`
/// reads the result out of the compiled program. Returns it with NVRTC's
/// (trimmed) log; a failed compile is an error naming the file and
/// carrying the log.
fn nvrtc_compile<T>(
    file: &str,
    full: &str,
    target: &str,
    output: impl FnOnce(cudarc::nvrtc::sys::nvrtcProgram) -> Result<T>,
) -> Result<(T, String)> {
    nvrtc_compile_with(file, full, target, &[], output)
}

/// [`nvrtc_compile`] with extra NVRTC options.
fn nvrtc_compile_with<T>(
    file: &str,
    full: &str,
    target: &str,
    extra: &[&str],
    output: impl FnOnce(cudarc::nvrtc::sys::nvrtcProgram) -> Result<T>,
) -> Result<(T, String)> {
    ensure_nvrtc()?;
    let src = CString::new(full)
        .map_err(|_| Error::Cuda(format!("{file}: kernel source contains a NUL byte")))?;
    let name = CString::new(file)
        .map_err(|_| Error::Cuda(format!("{file}: file name contains a NUL byte")))?;
    // NVRTC's defaults are kept on purpose: IEEE division and square root,
    // no flush-to-zero, because the GPU path is checked against the CPU
    // references and finite differences.
    let mut options = vec![
        format!("--gpu-architecture={target}"),
        "--std=c++17".to_string(),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    guard(file, || {
        use cudarc::nvrtc::result as nvrtc;
        let prog = nvrtc::create_program(&src, Some(&name))
            .map_err(|e| Error::Cuda(format!("{file}: nvrtcCreateProgram failed: {e:?}")))?;
        // SAFETY: prog is valid until destroy_program below; src/name outlive it.
        let compiled = unsafe { nvrtc::compile_program(prog, &options) };
        let log = unsafe { nvrtc::get_program_log(prog) }
            .map(|raw| c_chars_to_string(&raw))
            .unwrap_or_default();
        let out = match compiled {
            Ok(()) => output(prog),
            Err(e) => {
                let what = if target.starts_with("sm_") {
                    "CUBIN"
                } else {
                    "PTX"
                };
                Err(Error::Cuda(format!(
                    "{file}: NVRTC compile to {what} for {target} failed ({e:?}):\n{log}"
                )))
            }
        };
        // SAFETY: created above, destroyed once.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        Ok((out?, log.trim().to_string()))
    })
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    // SAFETY: c_char and u8 have the same size and layout.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast(), raw.len()) };
    match CStr::from_bytes_until_nul(bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_reports_are_parsed_per_kernel() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'conv_tc' for 'sm_90'\n\
ptxas info    : Function properties for conv_tc\n\
ptxas         .     24 bytes stack frame, 20 bytes spill stores, 40 bytes spill loads\n\
ptxas info    : Used 128 registers, used 1 barriers, 24 bytes cumulative stack size, 8448 bytes smem\n\
ptxas info    : Compile time = 99.1 ms\n\
ptxas info    : Compiling entry function 'pool' for 'sm_90'\n\
ptxas info    : Function properties for pool\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 40 registers, used 0 barriers\n";
        let r = parse_ptxas_report(log).unwrap();
        assert_eq!(
            r,
            vec![
                KernelResources {
                    kernel: "conv_tc".into(),
                    registers: 128,
                    spill_store_bytes: 20,
                    spill_load_bytes: 40
                },
                KernelResources {
                    kernel: "pool".into(),
                    registers: 40,
                    spill_store_bytes: 0,
                    spill_load_bytes: 0
                },
            ]
        );
        assert!(parse_ptxas_report("ptxas info    : 0 bytes gmem").is_err());
        let no_regs = "ptxas info    : Compiling entry function 'k' for 'sm_90'\n";
        assert!(parse_ptxas_report(no_regs)
            .unwrap_err()
            .contains("no register count for k"));
    }

    #[test]
    fn kernel_names_are_parsed_from_sources() {
        let src = "extern \"C\" __global__ void foo_fwd(P p) {}\n\
                   __device__ void helper() {}\n\
                   extern \"C\" __global__ void bar(Q q) {}\n\
                   extern \"C\" __global__ void __launch_bounds__(256) baz(R r) {}";
        assert_eq!(kernel_names(src), vec!["foo_fwd", "bar", "baz"]);
        for (file, src) in KERNEL_SOURCES {
            assert!(!kernel_names(src).is_empty(), "{file} defines no kernel");
        }
    }

    #[test]
    fn kernel_names_are_unique_across_files() {
        let mut all: Vec<&str> = KERNEL_SOURCES
            .iter()
            .flat_map(|(_, s)| kernel_names(s))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a kernel name is defined twice");
        assert_eq!(file_of_kernel("ew_binary_fwd").unwrap(), "elementwise.cu");
        assert!(file_of_kernel("no_such_kernel").is_err());
    }

    #[test]
    fn unknown_file_and_bad_arch_are_errors() {
        let e = compile_ptx("nope.cu", "sm_80").unwrap_err().to_string();
        assert!(e.contains("nope.cu") && e.contains("conv.cu"), "{e}");
        let e = compile_ptx("conv.cu", "80").unwrap_err().to_string();
        assert!(e.contains("'80'"), "{e}");
    }

    #[test]
    fn ptx_entry_params_are_measured() {
        let ptx = Ptx {
            file: "x.cu".into(),
            arch: "sm_80".into(),
            text: ".visible .entry k1(\n\t.param .align 8 .b8 k1_param_0[40]\n)\n{\n}\n\
                   .visible .entry k2(\n\t.param .u64 k2_param_0,\n\t.param .u32 k2_param_1\n)\n"
                .into(),
            log: String::new(),
        };
        assert_eq!(ptx.entry_param_bytes("k1"), Some(40));
        assert_eq!(ptx.entry_param_bytes("k2"), Some(12));
        assert!(!ptx.has_entry("k3"));
    }
}
