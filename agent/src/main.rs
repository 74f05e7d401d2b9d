//! `valkey-backup-agent`: a thin shell over the library (see `cli`).

use clap::Parser;

fn main() {
    tame_malloc();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let cli = valkey_backup_agent::cli::Cli::parse();
        valkey_backup_agent::cli::run(cli).await
    });
    std::process::exit(code);
}

/// Keeps the agent's resident memory at its part-buffer bound.
///
/// Part buffers are multi-megabyte blocks freed on other threads than the one that
/// allocated them. glibc raises its mmap threshold each time such a block is freed, after
/// which the blocks come from per-thread heap arenas that fragment and are never handed
/// back, so RSS would drift to several times the bound. A fixed threshold (which also
/// stops the dynamic adjustment) keeps every part buffer an mmap that is returned on free,
/// and two arenas are plenty for a process with a handful of threads.
fn tame_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1024 * 1024);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}
