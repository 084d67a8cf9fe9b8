//! The Debian packages of the Linux run: which, where they are cached, and unpacked.

use super::*;

// ---- Debian packages -----------------------------------------------------------------------

/// The name a kernel choice gives its manifest and unpacked tree: none for the default.
pub(super) fn choice_suffix(kernel_meta: &str) -> String {
    if kernel_meta == DEFAULT_KERNEL_META {
        String::new()
    } else {
        format!("-{kernel_meta}")
    }
}

/// The arm64 packages as `(name, .deb path)`, downloaded on the first run only: the list of
/// what was fetched is kept in `debs/MANIFEST` (`MANIFEST-<meta>` for another kernel), and a
/// run that finds every file of it present asks apt nothing.
pub(super) fn debian_packages(
    cache: &Path,
    kernel_meta: &str,
) -> Result<Vec<(String, PathBuf)>, String> {
    let debs = cache.join("debs");
    let manifest = debs.join(format!("MANIFEST{}", choice_suffix(kernel_meta)));
    if let Ok(text) = fs::read_to_string(&manifest) {
        let listed: Vec<(String, PathBuf)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, file)| (name.to_string(), debs.join(file)))
            .collect();
        if listed.len() == ARM64_PACKAGES.len() + 1 && listed.iter().all(|(_, p)| p.is_file()) {
            eprintln!(
                "xtask: linux: Debian arm64 packages cached in {}",
                debs.display()
            );
            return Ok(listed);
        }
    }
    fs::create_dir_all(&debs).map_err(|e| format!("cannot create {}: {e}", debs.display()))?;
    ensure_arm64_architecture()?;
    let kernel = kernel_package(kernel_meta)?;
    let mut names = vec![kernel];
    names.extend(ARM64_PACKAGES.iter().map(|p| (*p).to_string()));
    let mut listed = Vec::new();
    let mut text = String::new();
    for name in &names {
        // Another manifest may hold this package already (the kernels share the rest).
        let file = arm64_deb(&debs, name)?;
        let file_name = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(text, "{name} {file_name}");
        listed.push((name.clone(), file));
    }
    fs::write(&manifest, text).map_err(|e| format!("cannot write {}: {e}", manifest.display()))?;
    Ok(listed)
}

/// The arm64 `.deb` of package `name` in `debs`, downloaded there by apt when missing.
pub(super) fn arm64_deb(debs: &Path, name: &str) -> Result<PathBuf, String> {
    if let Some(file) = deb_files(debs, name).into_iter().next() {
        return Ok(file);
    }
    run(Command::new("apt-get")
        .current_dir(debs)
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .arg(format!("{name}:arm64")))?;
    deb_files(debs, name)
        .into_iter()
        .next()
        .ok_or_else(|| format!("apt-get download {name}:arm64 left no .deb"))
}

/// The `.deb` files of package `name` in `dir` (`NAME_VERSION_arm64.deb`).
fn deb_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}_");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|f| f.to_string_lossy())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with("_arm64.deb"))
        })
        .collect()
}

/// `dpkg --add-architecture arm64` and `apt-get update` when arm64 is not known yet.
pub(super) fn ensure_arm64_architecture() -> Result<(), String> {
    let known = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map_err(|e| format!("cannot run dpkg: {e}"))?;
    let lists_have_arm64 = Command::new("apt-cache")
        .args(["policy", "libc6:arm64"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Candidate: 2"));
    if String::from_utf8_lossy(&known.stdout)
        .lines()
        .any(|l| l.trim() == "arm64")
        && lists_have_arm64
    {
        return Ok(());
    }
    run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The kernel package the meta package `kernel_meta` depends on.
pub(super) fn kernel_package(kernel_meta: &str) -> Result<String, String> {
    let output = Command::new("apt-cache")
        .arg("depends")
        .arg(format!("{kernel_meta}:arm64"))
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_end_matches(":arm64"))
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-arm64"))
        .map(str::to_string)
        .ok_or_else(|| format!("{kernel_meta} names no kernel: {text}"))
}

/// Unpacks every package into `cache/root` (`root-<meta>` for another kernel), once per
/// manifest.
pub(super) fn unpack(
    cache: &Path,
    kernel_meta: &str,
    packages: &[(String, PathBuf)],
) -> Result<PathBuf, String> {
    let suffix = choice_suffix(kernel_meta);
    let sysroot = cache.join(format!("root{suffix}"));
    let stamp = cache.join(format!("root{suffix}.stamp"));
    let wanted: String = packages
        .iter()
        .map(|(_, p)| format!("{}\n", p.display()))
        .collect();
    if sysroot.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(sysroot);
    }
    if sysroot.exists() {
        fs::remove_dir_all(&sysroot)
            .map_err(|e| format!("cannot remove {}: {e}", sysroot.display()))?;
    }
    fs::create_dir_all(&sysroot)
        .map_err(|e| format!("cannot create {}: {e}", sysroot.display()))?;
    for (_, deb) in packages {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&sysroot))?;
    }
    fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(sysroot)
}

/// The kernel Image and its two TEE modules inside the unpacked packages.
pub(super) struct Kernel {
    pub(super) release: String,
    pub(super) image: PathBuf,
    pub(super) image_len: u64,
    pub(super) tee: PathBuf,
    pub(super) optee: PathBuf,
}

impl Kernel {
    /// Finds them; modules shipped xz-compressed (Debian's 6.12) are unpacked into `out`.
    pub(super) fn find(sysroot: &Path, out: &Path) -> Result<Self, String> {
        let modules = sysroot.join("lib").join("modules");
        let release = fs::read_dir(&modules)
            .map_err(|e| format!("no {}: {e}", modules.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|r| r.ends_with("-arm64"))
            .ok_or("the kernel package has no modules")?;
        let image = sysroot.join("boot").join(format!("vmlinuz-{release}"));
        let head = fs::read(&image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
        // The arm64 boot header: "ARM\x64" at 0x38, text_offset at 8, image_size at 16.
        if head.get(0x38..0x3c) != Some(b"ARM\x64".as_slice()) {
            return Err(format!(
                "{} is not a raw arm64 Image (compressed?)",
                image.display()
            ));
        }
        let word = |at: usize| {
            head.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        if word(8) != 0 {
            return Err(format!("unexpected text_offset {:#x}", word(8)));
        }
        if KERNEL_ADDR + word(16) > DTB_ADDR {
            return Err(format!(
                "the kernel's image_size {:#x} reaches the device tree",
                word(16)
            ));
        }
        let tee_dir = modules.join(&release).join("kernel/drivers/tee");
        let module = |rel: &str| -> Result<PathBuf, String> {
            let plain = tee_dir.join(rel);
            if plain.is_file() {
                return Ok(plain);
            }
            let xz = tee_dir.join(format!("{rel}.xz"));
            let name = Path::new(rel).file_name().unwrap_or_default();
            let unpacked = out.join(name);
            let output = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .map_err(|e| format!("cannot run xz for {}: {e}", xz.display()))?;
            if !output.status.success() {
                return Err(format!("{} and {} missing", plain.display(), xz.display()));
            }
            fs::write(&unpacked, &output.stdout)
                .map_err(|e| format!("cannot write {}: {e}", unpacked.display()))?;
            Ok(unpacked)
        };
        Ok(Self {
            image_len: head.len() as u64,
            tee: module("tee.ko")?,
            optee: module("optee/optee.ko")?,
            release,
            image,
        })
    }
}
