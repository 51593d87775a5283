//! The stop card (`/run/baton/configs/DEV-INO`): a `baton stop` run by root whose config is
//! unchanged since its supervisor validated it stops from the card and reads no config; an
//! edited config (valid or broken) takes the full reading; the card follows a handoff and a
//! reexec, goes with the supervisor, and one planted or altered by another user is never
//! used. They need root (cards are root's alone); without it they skip with a message.

use crate::harness;
use crate::stop_path::first;

use harness::{alive, own_program, skip_unless_root, wait_until, Svc, User};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Where the cards are (`config::card::DIR`).
const CARDS: &str = "/run/baton/configs";

/// The attacks move the card directory aside for a moment: the tests here that expect a
/// card wait for one another (other modules' stops only lose their shortcut meanwhile).
static CARD_DIR: Mutex<()> = Mutex::new(());

/// None (the test skipped) unless root; else the card directory to this test alone.
fn root_and_alone() -> Option<std::sync::MutexGuard<'static, ()>> {
    if skip_unless_root(ROOT_ONLY) {
        return None;
    }
    Some(CARD_DIR.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Why these tests are skipped when not run as root.
const ROOT_ONLY: &str = "stop cards are written and trusted by root only";

/// The card of `config` as the file is now (its name is the file's device and inode).
fn card_of(config: &Path) -> PathBuf {
    Path::new(CARDS).join(card_name(config))
}

/// The name of `config`'s card: `DEV-INO`.
fn card_name(config: &Path) -> String {
    let m = std::fs::metadata(config).expect("stat config");
    format!("{}-{}", m.dev(), m.ino())
}

/// The fingerprint fields a card must hold for `config` as it is now, as its text.
fn fingerprint_now(config: &Path) -> Vec<String> {
    let m = std::fs::metadata(config).expect("stat config");
    [
        m.dev() as i64,
        m.ino() as i64,
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
    .iter()
    .map(i64::to_string)
    .collect()
}

/// Whether a card for `config` as it is now is in place (written by its supervisor since
/// the file's last change).
fn card_fresh(config: &Path) -> bool {
    let Ok(bytes) = std::fs::read(card_of(config)) else {
        return false;
    };
    let fields: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    fields.len() > 8 && fields[0] == "baton-card 1" && fields[1..8] == fingerprint_now(config)[..]
}

/// `start`, once the config is older than the clock tick its change time was taken in: a
/// supervisor writes no card for a file that could still change unseen within that tick.
fn start(svc: &Svc) {
    settle(svc);
    svc.start();
}

/// Waits until the config is older than the clock tick of its last change.
fn settle(svc: &Svc) {
    let m = std::fs::metadata(&svc.config).expect("stat config");
    let changed = Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
    wait_until(T, "the config's change time to be past", || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| now > changed + Duration::from_millis(20))
    });
}

fn wait_for_card(svc: &Svc) {
    wait_until(T, "the supervisor's stop card", || card_fresh(&svc.config));
}

/// The stop came from the card: the card opened, the config only looked at (stat), never
/// opened, before the request.
fn assert_from_card(svc: &Svc, trace: &[String]) {
    let key = card_of(&svc.config);
    let key = key.file_name().expect("a name").to_string_lossy();
    let name = svc
        .config
        .file_name()
        .expect("a file name")
        .to_string_lossy();
    let all = || trace.join("\n");
    let request = first(trace, |l| {
        l.contains("sendto(") && l.contains(r#"\"request\":\"stop\""#)
    })
    .unwrap_or_else(|| panic!("no stop request:\n{}", all()));
    let card = first(trace, |l| {
        l.contains("openat(") && l.contains(&format!("\"{key}\""))
    })
    .unwrap_or_else(|| panic!("the card was not opened:\n{}", all()));
    assert!(card < request, "the card was read after the request");
    assert!(
        first(trace, |l| l.contains("openat(")
            && l.contains(&format!("{name}\"")))
        .is_none(),
        "the config was opened (read) although unchanged:\n{}",
        all()
    );
}

/// The stop read the config itself (the full reading).
fn assert_config_read(svc: &Svc, trace: &[String]) {
    let name = svc
        .config
        .file_name()
        .expect("a file name")
        .to_string_lossy();
    assert!(
        first(trace, |l| l.contains("openat(")
            && l.contains(&format!("\"{name}\"")))
        .is_some(),
        "the config was not read:\n{}",
        trace.join("\n")
    );
}

#[test]
fn an_unchanged_config_is_not_read_again_by_stop_which_still_warns_after_its_request() {
    let Some(_one) = root_and_alone() else {
        return;
    };
    let svc = own_program("cardfast");
    svc.start();
    let supervisor = svc.pid_in_file().expect("a PID file");
    wait_for_card(&svc);
    // The program gone since the start: the card's checks still find it, after the request.
    std::fs::remove_file(svc.path("bin/serve")).expect("rm the program");
    let (stop, trace) = svc.traced(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(stop.stdout, "cardfast stopped\n", "{stop:?}");
    assert!(
        stop.stderr.contains("warning: ") && stop.stderr.contains("not found"),
        "{stop:?}"
    );
    assert_from_card(&svc, &trace);
    let request = first(&trace, |l| l.contains("sendto(")).expect("a request");
    let program = first(&trace, |l| {
        l.contains("stat") && l.contains("/bin/serve\"") && !l.contains("execve")
    })
    .unwrap_or_else(|| panic!("the program was never checked:\n{}", trace.join("\n")));
    assert!(
        request < program,
        "the program was looked at before the request"
    );
    assert!(svc.processes().is_empty(), "the service outlived the stop");
    assert!(!alive(supervisor), "the supervisor outlived the stop");
    assert!(
        !card_of(&svc.config).exists(),
        "the card outlived its supervisor"
    );
}

#[test]
fn a_config_edited_since_the_start_is_read_again_and_a_broken_one_still_refuses() {
    let Some(_one) = root_and_alone() else {
        return;
    };
    let svc = own_program("cardedit");
    let text = std::fs::read_to_string(&svc.config).expect("read config");
    // A chmod, then a valid edit: nothing in the file a stop relies on changed, yet the
    // fingerprint did, so the full reading decides.
    for edit in ["chmod", "comment"] {
        start(&svc);
        wait_for_card(&svc);
        match edit {
            "chmod" => {
                std::fs::set_permissions(&svc.config, std::fs::Permissions::from_mode(0o640))
                    .expect("chmod")
            }
            _ => std::fs::write(&svc.config, format!("{text}# edited\n")).expect("edit"),
        }
        assert!(!card_fresh(&svc.config), "{edit}: the card still matches");
        let (stop, trace) = svc.traced(&["stop"]);
        assert_eq!(stop.code, 0, "{edit}: {stop:?}");
        assert_config_read(&svc, &trace);
        assert!(
            svc.processes().is_empty(),
            "{edit}: the service outlived the stop"
        );
    }
    // Broken since the start: refused as ever, the service left as it was.
    std::fs::write(&svc.config, &text).expect("mend");
    start(&svc);
    wait_for_card(&svc);
    let supervisor = svc.pid_in_file().expect("a PID file");
    let service = svc.processes();
    std::fs::write(&svc.config, format!("colour = \"blue\"\n{text}")).expect("break it");
    let stop = svc.baton(&["stop"]);
    assert_eq!(stop.code, 6, "{stop:?}");
    assert!(stop.stderr.contains("colour: unknown key"), "{stop:?}");
    assert!(alive(supervisor), "a refused stop stopped the supervisor");
    assert_eq!(
        svc.processes(),
        service,
        "a refused stop touched the service"
    );
    // Mended, it is a new file to the card (its change time moved): the full reading again.
    std::fs::write(&svc.config, &text).expect("mend");
    let (stop, trace) = svc.traced(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_config_read(&svc, &trace);
    assert!(svc.processes().is_empty(), "the service outlived the stop");
}

#[test]
fn the_card_is_rewritten_after_a_config_handoff_and_after_a_reexec() {
    let Some(_one) = root_and_alone() else {
        return;
    };
    let svc = Svc::new("cardhand", r#"["sleep", "1000"]"#, "");
    start(&svc);
    wait_for_card(&svc);
    let text = std::fs::read_to_string(&svc.config).expect("read config");
    std::fs::write(&svc.config, format!("{text}[stop]\ntimeout = \"20s\"\n")).expect("edit");
    assert!(
        !card_fresh(&svc.config),
        "the card still matches the edited file"
    );
    settle(&svc);
    let deploy = svc.baton(&["deploy"]);
    assert_eq!(deploy.code, 0, "config handoff: {deploy:?}");
    wait_until(T, "the card of the config handed over to", || {
        card_fresh(&svc.config)
    });
    let card = std::fs::read(card_of(&svc.config)).expect("the card");
    assert!(
        card.split(|&b| b == 0).any(|f| f == b"20000000000"),
        "the card holds the new stop timeout: {}",
        String::from_utf8_lossy(&card)
    );
    // The new image writes its own: take this one away first.
    std::fs::remove_file(card_of(&svc.config)).expect("rm the card");
    svc.reexec_in_place();
    wait_until(T, "the re-executed supervisor's card", || {
        card_fresh(&svc.config)
    });
    let (stop, trace) = svc.traced(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_from_card(&svc, &trace);
    assert!(svc.processes().is_empty(), "the service outlived the stop");
    assert!(!card_of(&svc.config).exists(), "the card outlived the stop");
}

/// A temporary of this config's card left by a supervisor killed as it wrote (create, then
/// SIGKILL before the rename) goes when the next supervisor of the config writes its card;
/// another config's is left alone.
#[test]
fn a_half_written_card_left_by_a_killed_supervisor_goes_at_the_next_card() {
    let Some(_one) = root_and_alone() else {
        return;
    };
    let svc = Svc::new("cardtmp", r#"["/bin/sleep", "1000"]"#, "");
    std::fs::create_dir_all(CARDS).expect("mkdir the card directory");
    let key = card_name(&svc.config);
    let left = Path::new(CARDS).join(format!(".{key}.0123456789abcdef.tmp"));
    let other = Path::new(CARDS).join(".0-0.0123456789abcdef.tmp");
    for planted in [&left, &other] {
        std::fs::write(planted, b"").expect("plant a half-written card");
    }
    start(&svc);
    wait_for_card(&svc);
    let (left_kept, others_kept) = (left.exists(), other.exists());
    let _ = std::fs::remove_file(&left);
    let _ = std::fs::remove_file(&other);
    assert!(!left_kept, "the half-written card outlived the next card");
    assert!(others_kept, "another config's temporary was taken");
    svc.stop();
}

#[test]
fn a_card_left_by_a_killed_supervisor_stops_what_it_left_and_goes() {
    let Some(_one) = root_and_alone() else {
        return;
    };
    // The leader dies with its supervisor (parent-death signal); its child stays behind.
    let svc = Svc::new("cardkill", r#"["sh", "-c", "sleep 1000 & wait"]"#, "");
    start(&svc);
    wait_for_card(&svc);
    let supervisor = svc.pid_in_file().expect("a PID file");
    let service = svc.processes();
    assert!(!service.is_empty(), "no service");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    wait_until(T, "the supervisor's death", || !alive(supervisor));
    wait_until(T, "the leader's death", || svc.processes().len() == 1);
    let (stop, trace) = svc.traced(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        stop.stderr.contains("left by a supervisor that died"),
        "{stop:?}"
    );
    let key = card_of(&svc.config);
    let key = key.file_name().expect("a name").to_string_lossy();
    assert!(
        first(&trace, |l| l.contains("openat(")
            && l.contains(&format!("\"{key}\"")))
        .is_some(),
        "the stale card was not used:\n{}",
        trace.join("\n")
    );
    assert!(svc.processes().is_empty(), "the orphans outlived the stop");
    assert!(!card_of(&svc.config).exists(), "the stale card stayed");
}

/// A card for `svc`'s config as it is now that sends a stop to `elsewhere` (where no
/// supervisor runs): used, it would report "not running" and leave the service up.
fn forged_card(svc: &Svc, elsewhere: &Path) -> Vec<u8> {
    let mut fields = vec!["baton-card 1".to_string()];
    fields.extend(fingerprint_now(&svc.config));
    fields.push("30000000000".into());
    fields.push("0".into());
    fields.push(svc.name.clone());
    fields.push(svc.config.display().to_string());
    for f in ["x.sock", "state", "x.pid", "log"] {
        fields.push(elsewhere.join(f).display().to_string());
    }
    fields.push("end".into());
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out
}

/// Puts `/run/baton` back as it was, whatever a test did to it.
struct Restore {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Restore {
    fn take() -> Restore {
        std::fs::create_dir_all(CARDS).expect("mkdir the card directory");
        let m = std::fs::metadata("/run/baton").expect("stat /run/baton");
        Restore {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

impl Restore {
    fn put_back(&self) {
        let cards = Path::new(CARDS);
        let aside = Path::new("/run/baton/configs.root");
        if aside.exists() {
            if cards.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                let _ = std::fs::remove_dir_all(cards);
            } else {
                let _ = std::fs::remove_file(cards);
            }
            let _ = std::fs::rename(aside, cards);
        }
        let _ = std::os::unix::fs::chown("/run/baton", Some(self.uid), Some(self.gid));
        let _ = std::fs::set_permissions("/run/baton", std::fs::Permissions::from_mode(self.mode));
        let _ = std::fs::set_permissions(cards, std::fs::Permissions::from_mode(0o700));
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        self.put_back();
    }
}

#[test]
fn a_card_planted_or_altered_by_another_user_is_never_used() {
    let Some(_one) = root_and_alone() else {
        return;
    };
    let restore = Restore::take();
    let svc = Svc::new("cardvictim", r#"["sleep", "1000"]"#, "");
    let user = User::new("card-");
    let lair = svc.path("lair");
    std::fs::create_dir_all(&lair).expect("mkdir");
    std::os::unix::fs::chown(&lair, Some(user.uid), Some(user.uid)).expect("chown");
    std::fs::set_permissions(&svc.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // The control: the same forged card, root's and in root's directory, is obeyed (says
    // "not running" and leaves the service up), so each refusal below is the trust check's.
    start(&svc);
    wait_for_card(&svc);
    std::fs::write(card_of(&svc.config), forged_card(&svc, &lair)).expect("forge as root");
    let stop = svc.baton(&["stop"]);
    assert_eq!(stop.stdout, "cardvictim is not running\n", "{stop:?}");
    assert!(
        !svc.processes().is_empty(),
        "the control stopped the service"
    );
    assert!(
        lair.join("state").exists(),
        "the control's stop went elsewhere"
    );
    std::fs::remove_dir_all(lair.join("state")).expect("clean the lair");
    assert!(!card_of(&svc.config).exists(), "a stale card stayed");
    assert_eq!(svc.stop().stdout, "cardvictim stopped\n");

    let key = card_name(&svc.config);
    let forged = |at: &Path| {
        std::fs::write(at, forged_card(&svc, &lair)).expect("forge");
        std::os::unix::fs::chown(at, Some(user.uid), Some(user.uid)).expect("chown");
    };
    let attacks: [(&str, &dyn Fn()); 4] = [
        // /run/baton handed to the user by mistake: the card directory becomes a link to theirs.
        ("a link for the directory", &|| {
            std::os::unix::fs::chown("/run/baton", Some(user.uid), None).expect("chown");
            let cards = lair.join("cards");
            user.sh(&format!(
                "mv {CARDS} /run/baton/configs.root && mkdir {} && ln -s {} {CARDS}",
                cards.display(),
                cards.display()
            ));
            forged(&cards.join(&key));
        }),
        // The same, with a directory of the user's own in its place.
        ("a directory of the user's", &|| {
            std::os::unix::fs::chown("/run/baton", Some(user.uid), None).expect("chown");
            user.sh(&format!(
                "mv {CARDS} /run/baton/configs.root && mkdir {CARDS}"
            ));
            forged(&Path::new(CARDS).join(&key));
        }),
        // Root's directory opened to everyone by mistake: the user's own card in it.
        ("a directory others can write", &|| {
            std::fs::set_permissions(CARDS, std::fs::Permissions::from_mode(0o1777))
                .expect("chmod");
            forged(&Path::new(CARDS).join(&key));
        }),
        // In root's directory as it should be: a card that is a link, to a root file the
        // user chose (here the forged card itself, made root's).
        ("a link for the card", &|| {
            let bait = svc.path("bait");
            std::fs::write(&bait, forged_card(&svc, &lair)).expect("bait");
            std::os::unix::fs::symlink(&bait, Path::new(CARDS).join(&key)).expect("ln -s");
        }),
    ];
    for (what, attack) in attacks {
        start(&svc);
        wait_for_card(&svc);
        let supervisor = svc.pid_in_file().expect("a PID file");
        let _ = std::fs::remove_file(card_of(&svc.config));
        attack();
        let (stop, trace) = svc.traced(&["stop"]);
        assert_eq!(stop.code, 0, "{what}: {stop:?}");
        assert_eq!(stop.stdout, "cardvictim stopped\n", "{what}: {stop:?}");
        assert!(
            svc.processes().is_empty(),
            "{what}: the service outlived the stop"
        );
        assert!(
            !alive(supervisor),
            "{what}: the supervisor outlived the stop"
        );
        assert_config_read(&svc, &trace);
        assert!(
            !lair.join("state").exists(),
            "{what}: the stop went where the forged card said"
        );
        // Root writes no card through what the user planted either.
        if what.starts_with("a link for the dir") || what.starts_with("a directory of") {
            let other = Svc::new("cardother", r#"["sleep", "1000"]"#, "");
            start(&other);
            wait_until(T, "the refused card in the event log", || {
                other
                    .log("baton.log")
                    .contains("unable to write the stop card")
            });
            other.stop();
            let planted: Vec<_> = std::fs::read_dir(if what.starts_with("a link") {
                lair.join("cards")
            } else {
                PathBuf::from(CARDS)
            })
            .expect("the planted directory")
            .collect();
            assert_eq!(
                planted.len(),
                1,
                "{what}: root wrote into the user's directory"
            );
        }
        // Back to root's own directory for the next one.
        restore.put_back();
        let _ = std::fs::remove_file(Path::new(CARDS).join(&key));
    }
    drop(restore);
    assert_eq!(
        std::fs::symlink_metadata(CARDS).expect("stat").mode() & 0o7777,
        0o700
    );
}
