//! The user database of the digest authenticator: user names with their HA1 values
//! (RFC 7616 §3.4.2, `HA1 = H(username ":" realm ":" password)`), for MD5, SHA-256 and
//! SHA-512-256 (RFC 8760 §2.1).
//!
//! Users come from `--user NAME:PASSWORD` arguments ([`UserDb::add_arg`]) and from a users
//! file ([`UserDb::load_file`]) with one entry per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! alice:secret
//! bob:ha1=0123456789abcdef0123456789abcdef
//! carol:ha1=<64 hex digits>
//! dave:ha1-md5=<32 hex digits>,ha1-sha256=<64 hex digits>,ha1-sha512-256=<64 hex digits>
//! ```
//!
//! `bob` has an MD5 HA1 (32 hex digits), `carol` a SHA-256 HA1 (64 hex digits: a bare
//! `ha1=` of 64 digits is SHA-256, as it always was). `dave` names the algorithm of each
//! HA1 (`ha1-md5=`, `ha1-sha256=`, `ha1-sha512-256=`), one or more separated by commas; each
//! algorithm at most once. A user given by HA1 values can only use those algorithms: give one
//! for MD5 too when phones that only answer MD5 (the first challenge offered by default)
//! register. A line is split at its first `:`; leading and trailing whitespace of the line is
//! removed. A password is kept only as its HA1 values (one per algorithm). A password that
//! itself starts with `ha1=` or `ha1-` cannot be given this way. A user name may appear once.

use core::fmt;
use std::path::{Path, PathBuf};

use hashbrown::HashMap;

use super::digest::{ha1, Algorithm, HexHash};

/// The HA1 values of one user, one slot per algorithm (in the order of [`Algorithm::ALL`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserEntry {
    ha1: [Option<HexHash>; Algorithm::ALL.len()],
}

impl UserEntry {
    /// The HA1 for `alg`, if this user can use that algorithm.
    pub fn ha1(&self, alg: Algorithm) -> Option<&HexHash> {
        self.ha1[alg.index()].as_ref()
    }
}

/// Users added, removed and with new HA1 values, from one database to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// What is wrong with one user entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// No `:` between name and password.
    MissingColon,
    /// Nothing before the `:`.
    EmptyName,
    /// Nothing after the `:`.
    EmptyPassword,
    /// The name contains a control character or a double quote.
    BadName,
    /// `ha1=` is followed by something that is not 32 or 64 hex digits, or an `ha1-ALG=`
    /// item names no algorithm, has the wrong length or repeats an algorithm.
    BadHa1,
    /// The user was already defined.
    Duplicate(String),
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::MissingColon => f.write_str(
                "expected name:password, name:ha1=HEX or name:ha1-ALG=HEX[,ha1-ALG=HEX]",
            ),
            LineProblem::EmptyName => f.write_str("empty user name"),
            LineProblem::EmptyPassword => f.write_str("empty password"),
            LineProblem::BadName => {
                f.write_str("user name contains a control character or a double quote")
            }
            LineProblem::BadHa1 => f.write_str(
                "ha1= must be followed by 32 hex digits (MD5) or 64 hex digits (SHA-256); \
                 ha1-md5= by 32, ha1-sha256= and ha1-sha512-256= by 64, each algorithm once",
            ),
            LineProblem::Duplicate(name) => write!(f, "user {name:?} is defined twice"),
        }
    }
}

/// An error loading users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDbError {
    /// The users file could not be read.
    Io { path: PathBuf, message: String },
    /// A bad entry; `path` and `line` (1-based) are set when it came from a file.
    BadLine {
        path: Option<PathBuf>,
        line: usize,
        problem: LineProblem,
    },
}

impl fmt::Display for UserDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserDbError::Io { path, message } => {
                write!(f, "cannot read users file {}: {message}", path.display())
            }
            UserDbError::BadLine {
                path: Some(path),
                line,
                problem,
            } => write!(f, "{}:{line}: {problem}", path.display()),
            UserDbError::BadLine {
                path: None,
                problem,
                ..
            } => write!(f, "bad user entry: {problem}"),
        }
    }
}

impl std::error::Error for UserDbError {}

/// Users with their HA1 values for one realm.
#[derive(Debug, Clone)]
pub struct UserDb {
    realm: String,
    users: HashMap<Box<[u8]>, UserEntry>,
}

impl UserDb {
    /// An empty database for `realm` (the realm goes into every HA1).
    pub fn new(realm: &str) -> UserDb {
        UserDb {
            realm: realm.to_owned(),
            users: HashMap::new(),
        }
    }

    /// What changed from `old` to this database (a reload of the users file).
    pub fn changes_from(&self, old: &UserDb) -> UserChanges {
        let mut c = UserChanges::default();
        for (name, entry) in &self.users {
            match old.users.get(name) {
                None => c.added += 1,
                Some(e) if e != entry => c.changed += 1,
                Some(_) => {}
            }
        }
        c.removed = old
            .users
            .keys()
            .filter(|n| !self.users.contains_key(*n))
            .count();
        c
    }

    /// The realm the HA1 values are computed for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The entry of a user.
    pub fn get(&self, name: &[u8]) -> Option<&UserEntry> {
        self.users.get(name)
    }

    /// Adds a user with a password: its HA1 for every algorithm is computed now.
    pub fn add_password(&mut self, name: &str, password: &str) -> Result<(), UserDbError> {
        check_name(name).map_err(bad)?;
        if password.is_empty() {
            return Err(bad(LineProblem::EmptyPassword));
        }
        let realm = self.realm.as_bytes();
        let mut entry = UserEntry::default();
        for alg in Algorithm::ALL {
            entry.ha1[alg.index()] = Some(ha1(alg, name.as_bytes(), realm, password.as_bytes()));
        }
        self.insert(name, entry)
    }

    /// Adds a user from a users-file line: `name:password`, `name:ha1=HEX` or
    /// `name:ha1-ALG=HEX[,ha1-ALG=HEX...]` (see the module documentation). Blank and `#`
    /// lines are accepted and add nothing.
    pub fn add_line(&mut self, line: &str) -> Result<(), UserDbError> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        self.add_arg(line)
    }

    /// Adds a user from a `--user` argument: `name:password`, `name:ha1=HEX` or
    /// `name:ha1-ALG=HEX[,...]`, taken as it is (no comments, no trimming).
    pub fn add_arg(&mut self, arg: &str) -> Result<(), UserDbError> {
        let (name, secret) = arg.split_once(':').ok_or(bad(LineProblem::MissingColon))?;
        if !secret.starts_with("ha1=") && !secret.starts_with("ha1-") {
            return self.add_password(name, secret);
        }
        check_name(name).map_err(bad)?;
        let entry = parse_ha1_list(secret).ok_or(bad(LineProblem::BadHa1))?;
        self.insert(name, entry)
    }

    /// Adds every user of a users file. The error names the file and the line.
    pub fn load_file(&mut self, path: impl AsRef<Path>) -> Result<(), UserDbError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| UserDbError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        self.load_str(&text, Some(path))
    }

    /// Adds every user of the text of a users file; `path` is used in errors.
    pub fn load_str(&mut self, text: &str, path: Option<&Path>) -> Result<(), UserDbError> {
        for (i, line) in text.lines().enumerate() {
            if let Err(UserDbError::BadLine { problem, .. }) = self.add_line(line) {
                return Err(UserDbError::BadLine {
                    path: path.map(Path::to_owned),
                    line: i + 1,
                    problem,
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, name: &str, entry: UserEntry) -> Result<(), UserDbError> {
        let key: Box<[u8]> = name.as_bytes().into();
        if self.users.contains_key(&key) {
            return Err(bad(LineProblem::Duplicate(name.to_owned())));
        }
        self.users.insert(key, entry);
        Ok(())
    }
}

/// `ha1=HEX` (32 digits MD5, 64 SHA-256) or a comma-separated list of `ha1-md5=HEX`,
/// `ha1-sha256=HEX`, `ha1-sha512-256=HEX`, each algorithm at most once.
fn parse_ha1_list(secret: &str) -> Option<UserEntry> {
    let mut entry = UserEntry::default();
    if let Some(hex_digits) = secret.strip_prefix("ha1=") {
        let alg = match hex_digits.len() {
            32 => Algorithm::Md5,
            _ => Algorithm::Sha256,
        };
        entry.ha1[alg.index()] = Some(HexHash::from_hex(hex_digits.as_bytes(), alg.hex_len())?);
        return Some(entry);
    }
    for item in secret.split(',') {
        let (label, hex_digits) = item.trim().split_once('=')?;
        let alg = match label {
            "ha1-md5" => Algorithm::Md5,
            "ha1-sha256" => Algorithm::Sha256,
            "ha1-sha512-256" => Algorithm::Sha512_256,
            _ => return None,
        };
        let slot = &mut entry.ha1[alg.index()];
        if slot.is_some() {
            return None;
        }
        *slot = Some(HexHash::from_hex(hex_digits.as_bytes(), alg.hex_len())?);
    }
    Some(entry)
}

fn bad(problem: LineProblem) -> UserDbError {
    UserDbError::BadLine {
        path: None,
        line: 0,
        problem,
    }
}

fn check_name(name: &str) -> Result<(), LineProblem> {
    if name.is_empty() {
        return Err(LineProblem::EmptyName);
    }
    if name.chars().any(|c| c.is_control() || c == '"') {
        return Err(LineProblem::BadName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(r: Result<(), UserDbError>) -> LineProblem {
        match r {
            Err(UserDbError::BadLine { problem, .. }) => problem,
            other => panic!("expected a bad line, got {other:?}"),
        }
    }

    #[test]
    fn password_gives_both_ha1() {
        let mut db = UserDb::new("testrealm@host.com");
        db.add_line("Mufasa:Circle Of Life").unwrap();
        let e = db.get(b"Mufasa").unwrap();
        // RFC 2617 §3.5 example: HA1 of Mufasa:testrealm@host.com:Circle Of Life.
        assert_eq!(
            e.ha1(Algorithm::Md5).unwrap().as_str(),
            "939e7578ed9e3c518a452acee763bce9"
        );
        assert_eq!(
            e.ha1(Algorithm::Sha256).unwrap().as_bytes(),
            ha1(
                Algorithm::Sha256,
                b"Mufasa",
                b"testrealm@host.com",
                b"Circle Of Life"
            )
            .as_bytes()
        );
        assert_eq!(db.len(), 1);
        assert!(db.get(b"mufasa").is_none());
    }

    #[test]
    fn user_arguments_are_taken_as_they_are() {
        let mut db = UserDb::new("r");
        assert_eq!(problem(db.add_arg("")), LineProblem::MissingColon);
        db.add_arg("#x: pw ").unwrap();
        let want = ha1(Algorithm::Md5, b"#x", b"r", b" pw ");
        assert_eq!(db.get(b"#x").unwrap().ha1(Algorithm::Md5), Some(&want));
        // The same text as a file line is a comment.
        let mut db = UserDb::new("r");
        db.add_line("#x: pw ").unwrap();
        assert!(db.is_empty());
    }

    #[test]
    fn password_may_contain_colons() {
        let mut db = UserDb::new("r");
        db.add_line("a:b:c").unwrap();
        let want = ha1(Algorithm::Md5, b"a", b"r", b"b:c");
        assert_eq!(db.get(b"a").unwrap().ha1(Algorithm::Md5), Some(&want));
    }

    #[test]
    fn ha1_users_have_one_algorithm() {
        let sha = "a".repeat(64);
        let mut db = UserDb::new("r");
        db.load_str(
            &format!("# users\n\n  bob:ha1=0123456789ABCDEF0123456789abcdef  \ncarol:ha1={sha}\n"),
            None,
        )
        .unwrap();
        assert_eq!(db.len(), 2);
        let bob = db.get(b"bob").unwrap();
        assert_eq!(
            bob.ha1(Algorithm::Md5).unwrap().as_str(),
            "0123456789abcdef0123456789abcdef"
        );
        assert!(bob.ha1(Algorithm::Sha256).is_none());
        let carol = db.get(b"carol").unwrap();
        assert!(carol.ha1(Algorithm::Md5).is_none());
        assert_eq!(carol.ha1(Algorithm::Sha256).unwrap().as_str(), sha);
    }

    #[test]
    fn ha1_values_named_by_algorithm() {
        let (m, s2, s5) = ("b".repeat(32), "c".repeat(64), "D".repeat(64));
        let mut db = UserDb::new("r");
        db.add_line(&format!(
            "dave:ha1-md5={m}, ha1-sha256={s2},ha1-sha512-256={s5}"
        ))
        .unwrap();
        db.add_line(&format!("erin:ha1-sha512-256={s5}")).unwrap();
        let dave = db.get(b"dave").unwrap();
        assert_eq!(dave.ha1(Algorithm::Md5).unwrap().as_str(), m);
        assert_eq!(dave.ha1(Algorithm::Sha256).unwrap().as_str(), s2);
        assert_eq!(
            dave.ha1(Algorithm::Sha512_256).unwrap().as_str(),
            s5.to_ascii_lowercase()
        );
        let erin = db.get(b"erin").unwrap();
        assert!(erin.ha1(Algorithm::Md5).is_none() && erin.ha1(Algorithm::Sha256).is_none());
        assert!(erin.ha1(Algorithm::Sha512_256).is_some());
        // A password gives every algorithm's HA1.
        db.add_line("frank:pw").unwrap();
        let frank = db.get(b"frank").unwrap();
        for alg in Algorithm::ALL {
            assert_eq!(frank.ha1(alg), Some(&ha1(alg, b"frank", b"r", b"pw")));
        }
        for bad in [
            format!("x:ha1-md5={s2}"),
            format!("x:ha1-sha256={m}"),
            format!("x:ha1-sha512-256={m}"),
            format!("x:ha1-md5={m},ha1-md5={m}"),
            format!("x:ha1-sha1={s2}"),
            format!("x:ha1-md5={m},"),
            format!("x:ha1-md5={m},{s2}"),
            "x:ha1-md5".to_owned(),
            "x:ha1-pw".to_owned(),
        ] {
            assert_eq!(problem(db.add_line(&bad)), LineProblem::BadHa1, "{bad}");
        }
        assert_eq!(db.len(), 3);
    }

    #[test]
    fn bad_entries() {
        let mut db = UserDb::new("r");
        assert_eq!(problem(db.add_line("alice")), LineProblem::MissingColon);
        assert_eq!(problem(db.add_line(":pw")), LineProblem::EmptyName);
        assert_eq!(problem(db.add_line("alice:")), LineProblem::EmptyPassword);
        assert_eq!(problem(db.add_line("al\"ice:pw")), LineProblem::BadName);
        assert_eq!(problem(db.add_line("alice:ha1=abc")), LineProblem::BadHa1);
        assert_eq!(
            problem(db.add_line(&format!("alice:ha1={}", "g".repeat(32)))),
            LineProblem::BadHa1
        );
        assert_eq!(
            problem(db.add_line(&format!("alice:ha1={}", "a".repeat(40)))),
            LineProblem::BadHa1
        );
        db.add_line("alice:pw").unwrap();
        assert_eq!(
            problem(db.add_line("alice:other")),
            LineProblem::Duplicate("alice".into())
        );
        assert_eq!(db.len(), 1);
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("sipshard-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.txt");
        std::fs::write(&path, "# ok\nalice:pw\n\nbob:ha1=xyz\n").unwrap();
        let mut db = UserDb::new("r");
        let err = db.load_file(&path).unwrap_err();
        assert_eq!(
            err,
            UserDbError::BadLine {
                path: Some(path.clone()),
                line: 4,
                problem: LineProblem::BadHa1
            }
        );
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}:4: ", path.display())),
            "{shown}"
        );
        assert!(shown.contains("hex digits"), "{shown}");

        std::fs::write(&path, "carol:pw\ncarol:pw2\n").unwrap();
        let err = UserDb::new("r").load_file(&path).unwrap_err();
        assert!(err
            .to_string()
            .ends_with(":2: user \"carol\" is defined twice"));

        let missing = dir.join("missing.txt");
        let err = UserDb::new("r").load_file(&missing).unwrap_err();
        assert!(matches!(err, UserDbError::Io { .. }));
        assert!(err.to_string().contains("missing.txt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_with_users() {
        let dir = std::env::temp_dir().join(format!("sipshard-users-ok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.txt");
        std::fs::write(
            &path,
            "alice:pw\r\n# c\r\nbob:ha1=0123456789abcdef0123456789abcdef\r\n",
        )
        .unwrap();
        let mut db = UserDb::new("r");
        db.add_password("zed", "z").unwrap();
        db.load_file(&path).unwrap();
        assert_eq!(db.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
