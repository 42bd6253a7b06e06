//! Compiled modules kept on disk between runs, so that a process starts its plugins without
//! compiling them again (Cranelift takes 0.4-0.65 s per plugin module; loading and checking
//! an entry, 2-3 ms).
//!
//! An entry is native code this process will run: whoever can change one runs code as this
//! user. So the cache trusts this user only. Its folder must belong to the process's
//! effective uid and be writable by nobody else (else it is not used at all), and an entry is
//! checked on the file descriptor it is read from: a regular file of that owner with mode
//! 0600. The entry is read whole and the bytes checked are the bytes loaded (nothing is
//! mapped again by name afterwards). Its header repeats its key and holds the SHA-256 of the
//! artifact, so a truncated, torn or corrupted file, or one copied from another key's name,
//! is compiled again and rewritten, never run. The digest guards against accidents; the
//! owner and mode checks against other users: someone who runs as this user can already do
//! whatever a cache entry could.
//!
//! Writers never share a file: each writes a temp file of its own (`O_CREAT|O_EXCL`, 0600),
//! syncs it, renames it over the entry's name and syncs the folder, so gateways sharing a
//! folder each read a whole entry or none, and a crash leaves no half entry under a real
//! name. The folder is bounded by [`Limits`]: after a write, the least recently used entries
//! (a hit refreshes an entry's modification time) are removed until it holds at most
//! `max_entries` entries and `max_bytes` bytes, and temp files a crashed writer left are
//! removed after [`STALE_TEMP`].
//!
//! Unix only (owners and modes), as the gateway.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// The first bytes of every entry; a new layout gets a new one, and old entries are then
/// compiled again and replaced.
const MAGIC: &[u8; 8] = b"WGMCACH1";
/// Magic, key, artifact digest, artifact length (little endian).
const HEADER: usize = 8 + 32 + 32 + 8;
const ENTRY_SUFFIX: &str = ".cwasm";
const TEMP_SUFFIX: &str = ".tmp";
/// A temp file older than this is a crashed writer's: a write takes milliseconds.
pub const STALE_TEMP: Duration = Duration::from_secs(600);
/// Written into a folder the cache creates: backup tools skip it (the Cache Directory
/// Tagging Specification) and git does not offer it for a commit.
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
    # This folder holds wasmgate's compiled modules; any entry can be deleted.\n";

/// How much the folder may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: u64,
}

impl Default for Limits {
    /// wasmgate's plugin modules compile to 0.8-1.5 MiB each: room for the modules of many
    /// releases and configurations, well before the bytes bound matters.
    fn default() -> Self {
        Limits {
            max_entries: 128,
            max_bytes: 512 << 20,
        }
    }
}

/// What an entry is looked up by: SHA-256 of the module's bytes, of the engine's compilation
/// settings and of the cache's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// `settings` are the owner's own knobs that change the code the engine makes. wasmtime's
    /// [`wasmtime::Engine::precompile_compatibility_hash`] covers the target, Cranelift's
    /// flags, the tunables (fuel, epoch interruption, memory reservations) and wasmtime's
    /// version; hashing ours as well keeps a key right should a wasmtime release stop covering
    /// one of them.
    pub fn new(engine: &wasmtime::Engine, settings: &impl Hash, wasm: &[u8]) -> Key {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.0.update(MAGIC);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        settings.hash(&mut hasher);
        hasher.0.update(Sha256::digest(wasm));
        Key(hasher.0.finalize().into())
    }

    fn file_name(&self) -> String {
        format!("{}{ENTRY_SUFFIX}", hex(&self.0))
    }
}

/// Feeds a [`Hash`] into SHA-256, so that wasmtime's compatibility hash is part of a key at
/// full strength rather than folded into 64 bits.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the cache was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// The folder is not this user's alone (or cannot be made): the cache is not used.
    Folder(String),
    /// The entry fails a check: it is compiled again and rewritten.
    Entry(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Folder(why) | Unusable::Entry(why) => f.write_str(why),
        }
    }
}

/// A folder of compiled modules.
#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    limits: Limits,
}

impl ModuleCache {
    pub fn new(dir: PathBuf, limits: Limits) -> ModuleCache {
        ModuleCache { dir, limits }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `key`'s entry is.
    pub fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The module `key` names, when its entry is there and passes every check; `Ok(None)`
    /// when there is none yet.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        key: &Key,
    ) -> Result<Option<wasmtime::Module>, Unusable> {
        match std::fs::metadata(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Unusable::Folder(format!("{}: {e}", self.dir.display()))),
            Ok(meta) => self.check_folder(&meta)?,
        }
        let path = self.path(key);
        let refused = |why: String| Unusable::Entry(format!("{}: {why}", path.display()));
        // O_NOFOLLOW: a symbolic link planted under an entry's name is refused, not followed.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refused(e.to_string())),
        };
        let meta = file.metadata().map_err(|e| refused(e.to_string()))?;
        check_entry(&meta).map_err(refused)?;
        if meta.len() > self.limits.max_bytes {
            return Err(refused(format!(
                "{} bytes, more than the cache's {} bytes",
                meta.len(),
                self.limits.max_bytes
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // Bounded even if the file grows meanwhile; a longer read fails the length check.
        (&file)
            .take(self.limits.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| refused(e.to_string()))?;
        let artifact = artifact(&bytes, key).map_err(|why| refused(why.to_owned()))?;
        // SAFETY: `artifact` is, byte for byte, what `Module::serialize` gave a process of
        // this user for this key: its SHA-256 is the one written with it, in a file only this
        // user could have written (owner and mode checked on the descriptor it was read
        // from), in a folder no other user can write to. The key covers the engine's
        // compatibility hash, which wasmtime checks again here. The bytes are in memory, so
        // the file changing after the check changes nothing.
        let module = unsafe { wasmtime::Module::deserialize(engine, artifact) }
            .map_err(|e| refused(crate::error::describe(&e)))?;
        // The least recently used entries are the first to go; a refresh that fails only
        // makes this one older.
        let _ = file.set_modified(SystemTime::now());
        Ok(Some(module))
    }

    /// Writes `artifact` (from `Module::serialize`) as `key`'s entry, then keeps the folder
    /// within its limits.
    pub fn store(&self, key: &Key, artifact: &[u8]) -> Result<(), Unusable> {
        let entry_bytes = (HEADER as u64).saturating_add(artifact.len() as u64);
        if entry_bytes > self.limits.max_bytes {
            return Err(Unusable::Entry(format!(
                "a {entry_bytes}-byte entry is more than the cache's {} bytes",
                self.limits.max_bytes
            )));
        }
        self.prepare_folder()?;
        let path = self.path(key);
        let written = self.write_entry(key, artifact, &path);
        written.map_err(|e| Unusable::Entry(format!("writing {}: {e}", path.display())))?;
        self.prune(&path);
        Ok(())
    }

    /// Creates the folder (0700) if it is missing; refuses one another user could write to.
    fn prepare_folder(&self) -> Result<(), Unusable> {
        let folder = |e: std::io::Error| Unusable::Folder(format!("{}: {e}", self.dir.display()));
        let meta = match std::fs::metadata(&self.dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(folder)?;
                // Another process may have written them first.
                for (name, text) in [("CACHEDIR.TAG", CACHEDIR_TAG), (".gitignore", "*\n")] {
                    let _ = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(self.dir.join(name))
                        .and_then(|mut f| f.write_all(text.as_bytes()));
                }
                std::fs::metadata(&self.dir).map_err(folder)?
            }
            Err(e) => return Err(folder(e)),
        };
        self.check_folder(&meta)
    }

    fn check_folder(&self, meta: &std::fs::Metadata) -> Result<(), Unusable> {
        let refused = |why: String| {
            Unusable::Folder(format!(
                "{} is not used: {why} (it must be this user's, writable by no other)",
                self.dir.display()
            ))
        };
        if !meta.is_dir() {
            return Err(refused("not a folder".into()));
        }
        if meta.uid() != euid() {
            return Err(refused(format!(
                "owned by uid {}, not {}",
                meta.uid(),
                euid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refused(format!(
                "mode {:04o}: others can write to it",
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    fn write_entry(&self, key: &Key, artifact: &[u8], path: &Path) -> std::io::Result<()> {
        let (temp, mut file) = self.create_temp(key)?;
        let written = (|| {
            // Whatever the umask left (fchmod on the descriptor: the file just created).
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            let digest: [u8; 32] = Sha256::digest(artifact).into();
            let mut header = Vec::with_capacity(HEADER);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&key.0);
            header.extend_from_slice(&digest);
            header.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
            file.write_all(&header)?;
            file.write_all(artifact)?;
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// A temp file no other writer has: `O_CREAT|O_EXCL` (which also refuses a symbolic
    /// link under the name), mode 0600, a random name beside the entry's.
    fn create_temp(&self, key: &Key) -> std::io::Result<(PathBuf, File)> {
        let mut last = None;
        for _ in 0..8 {
            let nonce = getrandom::u64().map_err(|e| std::io::Error::other(e.to_string()))?;
            let temp = self.dir.join(format!(
                ".{}.{}-{nonce:016x}{TEMP_SUFFIX}",
                hex(&key.0),
                std::process::id()
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
            {
                Ok(file) => return Ok((temp, file)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free temp file name")))
    }

    /// Removes the least recently used entries until the folder is within its limits (never
    /// `kept`, the entry just written), and temp files older than [`STALE_TEMP`]. Files of
    /// other names are not the cache's and are left alone. Another process pruning at the
    /// same time may remove a file first: that is not an error.
    fn prune(&self, kept: &Path) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for item in listing.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(meta) = item.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(now);
            if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                let age = now.duration_since(modified).unwrap_or_default();
                if age > STALE_TEMP && std::fs::remove_file(item.path()).is_ok() {
                    continue;
                }
                bytes = bytes.saturating_add(meta.len());
            } else if is_entry_name(name) {
                bytes = bytes.saturating_add(meta.len());
                entries.push((modified, meta.len(), item.path()));
            }
        }
        entries.sort();
        let mut count = entries.len();
        for (_, len, path) in entries {
            if count <= self.limits.max_entries && bytes <= self.limits.max_bytes {
                break;
            }
            if path == kept {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => log::debug!(
                    "module cache: removed {} (least recently used)",
                    path.display()
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => continue,
            }
            count -= 1;
            bytes = bytes.saturating_sub(len);
        }
    }
}

fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(ENTRY_SUFFIX).is_some_and(|stem| {
        stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// An entry must be a regular file of this user that nobody else may read or write.
fn check_entry(meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != euid() {
        return Err(format!("owned by uid {}, not {}", meta.uid(), euid()));
    }
    if meta.mode() & 0o7777 != 0o600 {
        return Err(format!("mode {:04o}, not 0600", meta.mode() & 0o7777));
    }
    Ok(())
}

/// The artifact of a whole entry for `key`, once its header says it is whole and its digest
/// matches.
fn artifact<'a>(entry: &'a [u8], key: &Key) -> Result<&'a [u8], &'static str> {
    let (header, artifact) = entry
        .split_at_checked(HEADER)
        .ok_or("shorter than its header")?;
    let (magic, rest) = header.split_at(MAGIC.len());
    let (stored_key, rest) = rest.split_at(32);
    let (digest, length) = rest.split_at(32);
    if magic != MAGIC {
        return Err("not a cache entry of this layout");
    }
    if stored_key != key.0 {
        return Err("the entry of another key");
    }
    let length = u64::from_le_bytes(length.try_into().map_err(|_| "a bad header")?);
    if length != artifact.len() as u64 {
        return Err("truncated or extended after it was written");
    }
    if Sha256::digest(artifact).as_slice() != digest {
        return Err("its SHA-256 is not the one written with it");
    }
    Ok(artifact)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    const WAT: &str = r#"(module (func (export "answer") (result i32) i32.const 42))"#;

    fn engine(fuel: bool) -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(fuel);
        wasmtime::Engine::new(&config).expect("an engine")
    }

    fn wasm(answer: i32) -> Vec<u8> {
        wat::parse_str(WAT.replace("42", &answer.to_string())).expect("WAT")
    }

    /// An engine, the key of `wasm(42)` and its artifact.
    fn compiled() -> (wasmtime::Engine, Key, Vec<u8>) {
        let engine = engine(false);
        let bytes = wasm(42);
        let module = wasmtime::Module::new(&engine, &bytes).expect("compiles");
        let key = Key::new(&engine, &(), &bytes);
        (engine, key, module.serialize().expect("serializes"))
    }

    fn answer(engine: &wasmtime::Engine, module: &wasmtime::Module) -> i32 {
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("an instance");
        let f = (instance.get_typed_func::<(), i32>(&mut store, "answer")).expect("answer");
        f.call(&mut store, ()).expect("runs")
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
    }

    fn cache(dir: &Path) -> ModuleCache {
        ModuleCache::new(dir.join("modules"), Limits::default())
    }

    #[test]
    fn an_entry_is_written_0600_in_a_0700_folder_and_loaded_back() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = cache(dir.path());
        let (engine, key, artifact) = compiled();
        assert!(matches!(cache.load(&engine, &key), Ok(None)));
        cache.store(&key, &artifact).expect("stored");
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(mode(&cache.path(&key)), 0o600);
        let module = cache.load(&engine, &key).expect("usable").expect("a hit");
        assert_eq!(answer(&engine, &module), 42);
        // What it created is marked as a cache, and nothing else (no temp file) is left.
        let mut names: Vec<String> = std::fs::read_dir(cache.dir())
            .expect("listing")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected = [
            ".gitignore".to_owned(),
            "CACHEDIR.TAG".into(),
            key.file_name(),
        ];
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_key_changes_with_the_module_the_engines_settings_and_ours() {
        let bytes = wasm(42);
        let key = Key::new(&engine(false), &("fuel", false), &bytes);
        assert_eq!(key, Key::new(&engine(false), &("fuel", false), &bytes));
        assert_ne!(key, Key::new(&engine(false), &("fuel", false), &wasm(43)));
        assert_ne!(key, Key::new(&engine(true), &("fuel", false), &bytes));
        assert_ne!(key, Key::new(&engine(false), &("fuel", true), &bytes));
    }

    /// Every way an entry can be damaged or misplaced is refused before wasmtime sees it.
    #[test]
    fn a_damaged_or_misplaced_entry_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = cache(dir.path());
        let (engine, key, artifact) = compiled();
        cache.store(&key, &artifact).expect("stored");
        let good = std::fs::read(cache.path(&key)).expect("the entry");
        let middle = HEADER + artifact.len() / 2;
        let mut flipped = good.clone();
        flipped[middle] ^= 0x01;
        let mut bad_digest = good.clone();
        bad_digest[8 + 32] ^= 0x80;
        let mut extended = good.clone();
        extended.push(0);
        let other_key = Key::new(&engine, &(), &wasm(43));
        let mut other = good.clone();
        other[8..40].copy_from_slice(&other_key.0);
        let cases: [(&str, &[u8]); 7] = [
            ("empty", &[]),
            ("a header only", &good[..HEADER]),
            ("truncated", &good[..middle]),
            ("a byte of code flipped", &flipped),
            ("its digest altered", &bad_digest),
            ("extended", &extended),
            ("written for another key", &other),
        ];
        for (what, bytes) in cases {
            std::fs::write(cache.path(&key), bytes).expect("written");
            match cache.load(&engine, &key) {
                Err(Unusable::Entry(_)) => {}
                other => panic!("{what}: {:?}", other.map(|m| m.is_some())),
            }
        }
        // The same entry under another key's name is another key's.
        std::fs::write(cache.path(&other_key), &good).expect("written");
        assert!(matches!(
            cache.load(&engine, &other_key),
            Err(Unusable::Entry(_))
        ));
    }

    #[test]
    fn an_entry_others_could_read_or_write_or_a_link_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = cache(dir.path());
        let (engine, key, artifact) = compiled();
        cache.store(&key, &artifact).expect("stored");
        let path = cache.path(&key);
        for refused in [0o644, 0o640, 0o604, 0o700, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(refused))
                .expect("chmod");
            match cache.load(&engine, &key) {
                Err(Unusable::Entry(why)) => assert!(why.contains("not 0600"), "{why}"),
                other => panic!("{refused:o}: {:?}", other.map(|m| m.is_some())),
            }
        }
        // A valid entry reached through a symbolic link is not followed.
        let elsewhere = dir.path().join("elsewhere.cwasm");
        std::fs::rename(&path, &elsewhere).expect("moved");
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("a link");
        assert!(matches!(cache.load(&engine, &key), Err(Unusable::Entry(_))));
    }

    /// As root (the only user who can give a file away), an entry of another owner is
    /// refused; as another user, a folder of root's is.
    #[test]
    fn what_another_user_owns_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (engine, key, artifact) = compiled();
        if euid() != 0 {
            let cache = ModuleCache::new(PathBuf::from("/"), Limits::default());
            match cache.load(&engine, &key) {
                Err(Unusable::Folder(why)) => assert!(why.contains("owned by uid 0"), "{why}"),
                other => panic!("{:?}", other.map(|m| m.is_some())),
            }
            return;
        }
        let cache = cache(dir.path());
        cache.store(&key, &artifact).expect("stored");
        std::os::unix::fs::chown(cache.path(&key), Some(65534), None).expect("chown");
        match cache.load(&engine, &key) {
            Err(Unusable::Entry(why)) => assert!(why.contains("owned by uid 65534"), "{why}"),
            other => panic!("{:?}", other.map(|m| m.is_some())),
        }
        std::os::unix::fs::chown(cache.path(&key), Some(0), None).expect("chown");
        std::os::unix::fs::chown(cache.dir(), Some(65534), None).expect("chown");
        match cache.load(&engine, &key) {
            Err(Unusable::Folder(why)) => assert!(why.contains("owned by uid 65534"), "{why}"),
            other => panic!("{:?}", other.map(|m| m.is_some())),
        }
    }

    #[test]
    fn a_folder_others_can_write_to_is_neither_read_nor_written() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = cache(dir.path());
        let (engine, key, artifact) = compiled();
        cache.store(&key, &artifact).expect("stored");
        for refused in [0o770, 0o730, 0o702, 0o777, 0o1777] {
            std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(refused))
                .expect("chmod");
            assert!(
                matches!(cache.load(&engine, &key), Err(Unusable::Folder(_))),
                "{refused:o}"
            );
            std::fs::remove_file(cache.path(&key)).expect("removed");
            assert!(matches!(
                cache.store(&key, &artifact),
                Err(Unusable::Folder(_))
            ));
            assert!(!cache.path(&key).exists(), "{refused:o}: written");
            std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            cache.store(&key, &artifact).expect("stored");
        }
        // Read-only for others is this user's alone.
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert!(matches!(cache.load(&engine, &key), Ok(Some(_))));
    }

    /// Writers of the same entry (several gateways starting on one folder) never let a
    /// reader see part of one, and leave no temp file.
    #[test]
    fn concurrent_writers_leave_whole_entries_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Arc::new(cache(dir.path()));
        let (engine, key, artifact) = compiled();
        let artifact = Arc::new(artifact);
        const WRITERS: usize = 6;
        let start = Arc::new(Barrier::new(WRITERS + 1));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (cache, artifact, start) = (
                    Arc::clone(&cache),
                    Arc::clone(&artifact),
                    Arc::clone(&start),
                );
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..20 {
                        cache.store(&key, &artifact).expect("stored");
                    }
                })
            })
            .collect();
        start.wait();
        let mut hits = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            match cache.load(&engine, &key) {
                Ok(Some(_)) => hits += 1,
                Ok(None) => {}
                Err(e) => panic!("a reader saw {e}"),
            }
        }
        for writer in writers {
            writer.join().expect("a writer");
        }
        assert!(matches!(cache.load(&engine, &key), Ok(Some(_))), "{hits}");
        let temps = std::fs::read_dir(cache.dir())
            .expect("listing")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(TEMP_SUFFIX))
            })
            .count();
        assert_eq!(temps, 0);
    }

    fn age(path: &Path, seconds: u64) {
        let file = File::open(path).expect("open");
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds))
            .expect("mtime");
    }

    fn entries(cache: &ModuleCache) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(cache.dir())
            .expect("listing")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| is_entry_name(name))
            .collect();
        names.sort();
        names
    }

    /// The folder holds at most `max_entries` entries and `max_bytes` bytes: the least
    /// recently used go (a hit counts as a use); crashed writers' temp files go once stale;
    /// other files stay.
    #[test]
    fn the_folder_stays_within_its_limits_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (engine, _, artifact) = compiled();
        let entry_len = (HEADER + artifact.len()) as u64;
        let cache = ModuleCache::new(
            dir.path().join("modules"),
            Limits {
                max_entries: 3,
                max_bytes: u64::MAX,
            },
        );
        // Five keys for one artifact: only the key in the header tells them apart.
        let keys: Vec<Key> = (0..5).map(|i| Key::new(&engine, &i, &wasm(42))).collect();
        for (i, key) in keys.iter().enumerate().take(3) {
            cache.store(key, &artifact).expect("stored");
            age(&cache.path(key), 100 - i as u64);
        }
        std::fs::write(cache.dir().join("notes.txt"), "not the cache's").expect("written");
        let stale = cache
            .dir()
            .join(format!(".{}.1-0{TEMP_SUFFIX}", hex(&keys[4].0)));
        std::fs::write(&stale, "a crashed writer's").expect("written");
        age(&stale, STALE_TEMP.as_secs() + 60);
        let fresh = cache
            .dir()
            .join(format!(".{}.1-1{TEMP_SUFFIX}", hex(&keys[4].0)));
        std::fs::write(&fresh, "a writer at work").expect("written");
        // The oldest entry is used again: the second oldest goes when a fourth comes.
        assert!(matches!(cache.load(&engine, &keys[0]), Ok(Some(_))));
        cache.store(&keys[3], &artifact).expect("stored");
        let mut expected: Vec<String> = [0, 2, 3].iter().map(|&i| keys[i].file_name()).collect();
        expected.sort();
        assert_eq!(entries(&cache), expected);
        assert!(!stale.exists(), "a stale temp file stayed");
        assert!(fresh.exists() && cache.dir().join("notes.txt").exists());
        assert!(cache.dir().join("CACHEDIR.TAG").exists());

        // By bytes: room for two entries (and the writer's temp file) only.
        let cache = ModuleCache::new(
            cache.dir().to_owned(),
            Limits {
                max_entries: 100,
                max_bytes: 2 * entry_len + 100,
            },
        );
        for (age_s, i) in [(30, 3), (20, 0), (10, 2)] {
            age(&cache.path(&keys[i]), age_s);
        }
        cache.store(&keys[4], &artifact).expect("stored");
        let mut expected: Vec<String> = [2, 4].iter().map(|&i| keys[i].file_name()).collect();
        expected.sort();
        assert_eq!(entries(&cache), expected);
    }

    #[test]
    fn an_entry_past_the_byte_limit_is_not_written() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (_, key, artifact) = compiled();
        let cache = ModuleCache::new(
            dir.path().join("modules"),
            Limits {
                max_entries: 10,
                max_bytes: artifact.len() as u64,
            },
        );
        assert!(matches!(
            cache.store(&key, &artifact),
            Err(Unusable::Entry(_))
        ));
        assert!(!cache.path(&key).exists());
    }
}
