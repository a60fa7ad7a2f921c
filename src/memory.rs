//! Peak memory of a piece of work, for the cost of each training method (the report's cost
//! table): on CUDA the caching allocator's peak of allocated bytes (what
//! `torch.cuda.max_memory_allocated` reports: tensors, not the allocator's cache or the CUDA
//! context); on the CPU the process's peak resident set size (`VmHWM`: libtorch and the loaded
//! data set included), which Linux lets a process restart by writing 5 to
//! `/proc/self/clear_refs`.

use tch::Device;

/// A size as people read it: `512.0 MiB`, `1.50 GiB`.
pub fn bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = b as f64;
    if b < 1024.0 * MIB {
        format!("{:.1} MiB", b / MIB)
    } else {
        format!("{:.2} GiB", b / (1024.0 * MIB))
    }
}

/// Restarts the peak of `device` from what is in use now, so that [`peak`] measures what
/// follows; false where that cannot be done (no `/proc`, a libtorch without CUDA), and the
/// peak stays the peak since the start.
pub fn reset_peak(device: Device) -> bool {
    match device {
        Device::Cuda(i) => crate::shim::cuda_peak_allocated(i, true).is_ok(),
        _ => std::fs::write("/proc/self/clear_refs", "5").is_ok(),
    }
}

/// The peak bytes in use on `device` since the last [`reset_peak`], if this platform says.
pub fn peak(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(i) => crate::shim::cuda_peak_allocated(i, false).ok(),
        _ => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: u64 = line
                .trim_start_matches("VmHWM:")
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb * 1024)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_peak_follows_what_the_process_touches() {
        let Some(before) = peak(Device::Cpu) else { return }; // no /proc: nothing to measure
        let big = std::hint::black_box(vec![1u8; 256 << 20]);
        let during = peak(Device::Cpu).unwrap();
        assert!(during >= before.max(256 << 20), "{during} after touching 256 MiB");
        drop(big);
        if !reset_peak(Device::Cpu) {
            return; // the kernel does not let this process restart its peak
        }
        let after = peak(Device::Cpu).unwrap();
        assert!(after + (200 << 20) < during, "reset: {after} vs {during}");
    }
}
