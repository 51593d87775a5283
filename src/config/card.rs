//! The stop card: what `baton stop` needs of a running service, left by its supervisor.
//!
//! A supervisor run by root that has read and validated its config writes, under the config
//! file's identity (`/run/baton/configs/DEV-INO`), the file's fingerprint as it read it and
//! what a stop uses: the name, the control socket, the state and log directories, the PID
//! file, the stop timeout and the checks of the host to warn with (program, working
//! directory, `env_file`). A stop run by root that
//! finds a card whose fingerprint is the file's now skips the reading, parsing and
//! validation of a file byte for byte the one the supervisor validated: most of what it
//! ran before its request (benches/PROFILE-stop.md). Any write, chmod or chown since moves
//! the file's change time, so an edited config (broken or not) still takes the full
//! reading, which refuses a broken one as ever.
//!
//! A card is a cache of a validation, never a proof of life: the locks and the socket still
//! decide whether the service runs. Only root's cards count: the directory is root's (0700)
//! and reached through no symbolic link, each card root's own file with one link, checked
//! on its descriptor; anything else is ignored and the full reading made.

use super::reader::{Deferred, HostCheck};
use super::{Fingerprint, Later, Spec};
use crate::files::Dir;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the cards are.
pub const DIR: &str = "/run/baton/configs";

/// The first field of every card: its format.
const MAGIC: &[u8] = b"baton-card 1";

/// A card is a few hundred bytes; anything much larger is not one.
const MAX_CARD: u64 = 64 * 1024;

/// A card read back and matched to the config file as it is now.
#[derive(Debug)]
pub struct Card {
    /// The service's name.
    pub name: String,
    /// The config file (absolute, as the supervisor was given it).
    pub file: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// PID file.
    pub pidfile: PathBuf,
    /// Log directory.
    pub log_dir: PathBuf,
    /// The stop timeout.
    pub stop_timeout: Duration,
    fingerprint: Fingerprint,
    checks: Deferred,
}

impl Card {
    /// The checks of the host the supervisor's reading made, made again now: each problem a
    /// warning line, as [`Later::warnings`] words a full reading's.
    pub fn warnings(&self) -> Vec<String> {
        Later {
            file: self.file.clone(),
            read: Vec::new(),
            parsed: Vec::new(),
            checks: self.checks.clone(),
        }
        .warnings()
    }

    /// Removes this card, found stale (no supervisor runs the service).
    pub fn remove(&self) {
        if let Ok(dir) = Dir::open(Path::new(DIR)) {
            let _ = dir.remove(&key(&self.fingerprint));
        }
    }
}

/// The card's name: the config file's device and inode, `DEV-INO`.
fn key(fp: &Fingerprint) -> OsString {
    let mut name = String::with_capacity(41);
    decimal(fp.dev, &mut name);
    name.push('-');
    decimal(fp.ino, &mut name);
    OsString::from(name)
}

/// Appends `n` in decimal, as `{}` writes it, without core::fmt: a stop's only use of it
/// before its request, whose code and tables were three pages (benches/PROFILE-stop.md,
/// ninth round).
fn decimal(mut n: u64, out: &mut String) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// The card of the config `file` (absolute) for the service `name`, if root's, and if the
/// file is still the one the supervisor read: same fingerprint, path and name. None sends
/// the stop to the full reading (not root, no card, any difference, anything unexpected).
pub fn read(file: &Path, name: &str) -> Option<Card> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let now = Fingerprint::of(&nix::sys::stat::stat(file).ok()?);
    let bytes = crate::files::read_root_only(Path::new(DIR), &key(&now), MAX_CARD).ok()?;
    matching(&bytes, now, file, name)
}

/// The card `baton`'s front read and handed over open (`control::Sent`), on the same terms
/// as [`read`]: root's regular file, written by no one else, matching the file as it is
/// now. Its name may be gone by now: the supervisor removes its card as it exits, which
/// a sent stop may already have brought about.
pub fn read_open(card: std::fs::File, file: &Path, name: &str) -> Option<Card> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let bytes = crate::files::read_root_file(card, MAX_CARD, 0..=1).ok()?;
    let now = Fingerprint::of(&nix::sys::stat::stat(file).ok()?);
    matching(&bytes, now, file, name)
}

/// The card in `bytes`, if it is the one of `file` (fingerprint `now`) for `name`.
fn matching(bytes: &[u8], now: Fingerprint, file: &Path, name: &str) -> Option<Card> {
    let card = decode(bytes)?;
    (card.fingerprint == now && card.name == name && card.file == file).then_some(card)
}

/// A card written: its name and the inode it was written as, so that the supervisor removes
/// only its own.
#[derive(Debug)]
pub struct Written {
    name: OsString,
    ino: u64,
}

impl Written {
    /// Removes the card if it is still the one written (another supervisor of the same file
    /// may have replaced it since).
    pub fn remove(self) {
        if let Ok(dir) = Dir::open(Path::new(DIR)) {
            if dir.entry(&self.name).is_ok_and(|st| st.st_ino == self.ino) {
                let _ = dir.remove(&self.name);
            }
        }
    }
}

/// Writes the card of `spec` (as root, when its reading left a fingerprint), replacing
/// `old` (this supervisor's previous card) when the file's identity changed. A failure only
/// costs the stops their shortcut: it is logged, not fatal.
pub fn write(spec: &Spec, old: Option<Written>) -> Option<Written> {
    let fp = spec.origin.fingerprint;
    let name = fp.as_ref().map(key);
    if let Some(old) = old.filter(|o| Some(&o.name) != name.as_ref()) {
        old.remove();
    }
    let (fp, name) = (fp?, name?);
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let body = encode(spec, &fp)?;
    let written = (|| -> std::io::Result<Written> {
        let parent = Path::new(DIR).parent().unwrap_or(Path::new("/"));
        match std::fs::create_dir(parent) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let dir = Dir::open(parent)?.private_subdir(OsStr::new("configs"))?;
        // A supervisor of this config killed between the temporary's creation and its
        // rename left it here (on tmpfs until the next boot): the next one takes it away.
        let _ = dir.remove_stale_temporaries(&name);
        dir.write_atomic(&name, &body, 0o600)?;
        let ino = dir.entry(&name)?.st_ino;
        Ok(Written { name, ino })
    })();
    written
        .inspect_err(|e| tracing::warn!("unable to write the stop card in {DIR}: {e}"))
        .ok()
}

/// NUL-separated fields (no path, name or argument can hold a NUL); None if one does.
fn encode(spec: &Spec, fp: &Fingerprint) -> Option<Vec<u8>> {
    let mut out = Fields(Vec::with_capacity(512));
    out.put(MAGIC)?;
    for n in [
        fp.dev as i128,
        fp.ino as i128,
        fp.size as i128,
        fp.mtime.0 as i128,
        fp.mtime.1 as i128,
        fp.ctime.0 as i128,
        fp.ctime.1 as i128,
        spec.stop.timeout.as_nanos().min(i128::MAX as u128) as i128,
        spec.origin.checks.len() as i128,
    ] {
        out.put(n.to_string().as_bytes())?;
    }
    out.put(spec.name.as_bytes())?;
    for p in [
        &spec.file,
        &spec.socket,
        &spec.state_dir,
        &spec.pidfile,
        &spec.log.dir,
    ] {
        out.put(p.as_os_str().as_bytes())?;
    }
    for (check, line) in &spec.origin.checks {
        out.put(line.map(|l| l.to_string()).unwrap_or_default().as_bytes())?;
        match check {
            HostCheck::Workdir(p) => {
                out.put(b"workdir")?;
                out.put(p.as_os_str().as_bytes())?;
            }
            HostCheck::EnvFile(p) => {
                out.put(b"env_file")?;
                out.put(p.as_os_str().as_bytes())?;
            }
            HostCheck::Program {
                prog,
                base,
                search,
                as_root,
            } => {
                out.put(b"program")?;
                out.put(prog.as_bytes())?;
                out.put(base.as_os_str().as_bytes())?;
                out.put(search.as_bytes())?;
                out.put(if *as_root { b"root" } else { b"user" })?;
            }
        }
    }
    out.put(b"end")?;
    Some(out.0)
}

struct Fields(Vec<u8>);

impl Fields {
    fn put(&mut self, field: &[u8]) -> Option<()> {
        if field.contains(&0) {
            return None;
        }
        self.0.extend_from_slice(field);
        self.0.push(0);
        Some(())
    }
}

/// [`encode`]'s fields back; None for anything else (another format, a cut card).
fn decode(bytes: &[u8]) -> Option<Card> {
    let mut fields = bytes.strip_suffix(b"\0")?.split(|&b| b == 0);
    let mut next = || fields.next();
    if next()? != MAGIC {
        return None;
    }
    let mut num = || -> Option<i64> { std::str::from_utf8(next()?).ok()?.parse().ok() };
    let (dev, ino, size) = (num()?, num()?, num()?);
    let (mtime, ctime) = ((num()?, num()?), (num()?, num()?));
    let (timeout, n) = (num()?, num()?);
    let fingerprint = Fingerprint {
        dev: dev as u64,
        ino: ino as u64,
        size,
        mtime,
        ctime,
    };
    let path = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
    let name = String::from_utf8(next()?.to_vec()).ok()?;
    let [file, socket, state_dir, pidfile, log_dir] = [(); 5].map(|()| next().map(path));
    let mut checks = Vec::new();
    for _ in 0..n {
        let line = match next()? {
            b"" => None,
            l => Some(std::str::from_utf8(l).ok()?.parse().ok()?),
        };
        let check = match next()? {
            b"workdir" => HostCheck::Workdir(path(next()?)),
            b"env_file" => HostCheck::EnvFile(path(next()?)),
            b"program" => HostCheck::Program {
                prog: String::from_utf8(next()?.to_vec()).ok()?,
                base: path(next()?),
                search: OsString::from_vec(next()?.to_vec()),
                as_root: next()? == b"root",
            },
            _ => return None,
        };
        checks.push((check, line));
    }
    if next()? != b"end" || next().is_some() {
        return None;
    }
    Some(Card {
        name,
        file: file?,
        socket: socket?,
        state_dir: state_dir?,
        pidfile: pidfile?,
        log_dir: log_dir?,
        stop_timeout: Duration::from_nanos(u64::try_from(timeout).ok()?),
        fingerprint,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cards_name_is_its_device_and_inode_in_decimal() {
        for (dev, ino) in [(0, 0), (9, 10), (2049, 1_234_567), (u64::MAX, 1 << 63)] {
            let fp = Fingerprint {
                dev,
                ino,
                size: 0,
                mtime: (0, 0),
                ctime: (0, 0),
            };
            assert_eq!(key(&fp), OsString::from(format!("{dev}-{ino}")));
        }
    }

    #[test]
    fn a_card_reads_back_as_written_and_a_damaged_one_not_at_all() {
        let dir = std::env::temp_dir().join(format!("baton-card-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        std::fs::create_dir_all(dir.join("app")).expect("workdir");
        std::fs::write(dir.join("web.env"), "A=1\n").expect("env file");
        let file = dir.join("web.toml");
        std::fs::write(
            &file,
            "command = [\"sleep\", \"1000\"]\nworkdir = \"app\"\nenv_file = \"web.env\"\n[stop]\ntimeout = \"7s\"\n",
        )
        .expect("write");
        let spec = super::super::load(&file, "web").expect("valid");
        let fp = Fingerprint::of(&nix::sys::stat::stat(&file).expect("stat"));
        let bytes = encode(&spec, &fp).expect("encodes");
        let card = decode(&bytes).expect("decodes");
        assert_eq!(card.fingerprint, fp);
        assert_eq!(card.name, "web");
        assert_eq!(card.file, file);
        assert_eq!(card.socket, spec.socket);
        assert_eq!(card.state_dir, spec.state_dir);
        assert_eq!(card.pidfile, spec.pidfile);
        assert_eq!(card.log_dir, spec.log.dir);
        assert_eq!(card.stop_timeout, Duration::from_secs(7));
        assert_eq!(card.checks.len(), 3, "{:?}", card.checks);
        assert!(card.warnings().is_empty(), "{:?}", card.warnings());
        std::fs::remove_dir(dir.join("app")).expect("rm workdir");
        std::fs::write(dir.join("web.env"), "not an assignment\n").expect("break it");
        let warned = card.warnings();
        assert!(
            warned.len() == 2 && warned[0].contains(":2: ") && warned[0].contains("app"),
            "{warned:?}"
        );
        assert!(
            warned[1].contains(":3: ") && warned[1].contains("web.env:1"),
            "{warned:?}"
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[MAGIC.len() - 1] = b'2';
        assert!(decode(&other).is_none(), "another format");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
