//! `vigil token new`: makes a bearer token for the HTTP API. The token (32 random bytes from
//! the OS, base64url, prefixed `vgl_` so that secret scanners know it) is printed once; the
//! config keeps only its SHA-256 (`[[http.tokens]]`), which is safe to show.

use anyhow::Result;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::fmt::Write as _;
use vigil_core::config::TokenScope;

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Make a token: prints it once, and the `[[http.tokens]]` lines for the config file.
    New {
        /// read: /metrics and the GET /api routes; admin: also the routes that change state
        /// and /api/config.
        #[arg(long, value_enum)]
        scope: Scope,
        /// Who holds it (logged with its admin requests); default: the scope and 6 hex digits.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Scope {
    Read,
    Admin,
}

impl From<Scope> for TokenScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Read => TokenScope::Read,
            Scope::Admin => TokenScope::Admin,
        }
    }
}

/// A new token's text and the hex SHA-256 the config holds.
pub fn new_token() -> Result<(String, String)> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("vgl_{}", URL_SAFE_NO_PAD.encode(secret));
    let digest =
        vigil_control::http::auth::token_digest(&token)
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
    Ok((token, digest))
}

pub fn run(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::New { scope, name } => {
            let scope = TokenScope::from(scope);
            let (token, digest) = new_token()?;
            let name = name.unwrap_or_else(|| format!("{}-{}", scope.as_str(), &digest[..6]));
            println!(
                "token (shown once: give it to the client as `Authorization: Bearer <token>`):"
            );
            println!("{token}");
            println!();
            println!("add to the config file (then restart Vigil):");
            println!("[[http.tokens]]");
            println!("name = {name:?}");
            println!("scope = \"{}\"", scope.as_str());
            println!("sha256 = \"{digest}\"");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_47_characters_and_differ() {
        let (a, da) = super::new_token().unwrap();
        let (b, _) = super::new_token().unwrap();
        assert_eq!(a.len(), 47);
        assert!(a.starts_with("vgl_") && a != b);
        assert_eq!(da.len(), 64);
    }
}
