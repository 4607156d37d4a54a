//! `shardmq passwd`: Mosquitto's `mosquitto_passwd`, writing the same file format
//! (`user:$7$101$salt$hash`), so files it writes are read by Mosquitto and the other
//! way round.

use clap::Args;
use shardmq::auth::password::{PasswordFile, PasswordHash};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `shardmq passwd [-c] [-b] [-D] FILE USER [PASSWORD]`
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Create a new file, replacing any existing one.
    #[arg(short = 'c')]
    create: bool,
    /// Take the password from the command line instead of prompting.
    #[arg(short = 'b')]
    batch: bool,
    /// Delete USER from the file.
    #[arg(short = 'D', conflicts_with_all = ["create", "batch"])]
    delete: bool,
    /// The password file.
    file: PathBuf,
    /// The user to add, update or delete.
    user: String,
    /// The password (with -b only).
    password: Option<String>,
}

pub fn run(args: PasswdArgs) -> ExitCode {
    match passwd(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(args: PasswdArgs) -> Result<(), String> {
    if args.user.is_empty() || args.user.contains(':') {
        return Err("a user name must be non-empty and contain no ':'".into());
    }
    if args.batch != args.password.is_some() {
        return Err("a password is given on the command line with -b, and only then".into());
    }
    let mut file = if args.create {
        PasswordFile::default()
    } else {
        let text = std::fs::read_to_string(&args.file)
            .map_err(|e| format!("cannot read {}: {e} (-c creates it)", args.file.display()))?;
        PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", args.file.display()))?
    };
    if args.delete {
        if !file.remove(&args.user) {
            return Err(format!("user {} not in {}", args.user, args.file.display()));
        }
    } else {
        let password = match args.password {
            Some(p) => p,
            None => prompt()?,
        };
        file.set(&args.user, PasswordHash::new(password.as_bytes()));
    }
    write_file(&args.file, &file.to_string())
}

/// Asks twice, without echo.
fn prompt() -> Result<String, String> {
    let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
    let again = rpassword::prompt_password("Reenter password: ").map_err(|e| e.to_string())?;
    if first != again {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

/// Replaces `path` whole (a temporary file renamed over it), readable by its owner
/// only when new, keeping an existing file's permissions.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp-shardmq-passwd");
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
