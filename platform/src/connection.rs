//! How orderflow proves who it is to Kafka and to the CQL database, and how it checks them: SASL logins
//! and TLS. Parsed once at the edge (`--kafka-security-protocol`, `--cql-username`, ...) into these types,
//! in which a SASL protocol without a login, or a login that would be sent nowhere, cannot be written.
//! The adapters turn them into their client's settings.

use std::path::PathBuf;

use crate::secret::Secret;

/// The SASL mechanism of a Kafka login. GSSAPI (Kerberos) and OAUTHBEARER are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    /// SCRAM with SHA-512: the password never crosses the wire (the default).
    #[default]
    ScramSha512,
    ScramSha256,
    /// The password in the clear: only over TLS.
    Plain,
}

impl SaslMechanism {
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().replace('_', "-").as_str() {
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "PLAIN" => Ok(Self::Plain),
            _ => Err(format!("{s:?}: the SASL mechanism is SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")),
        }
    }

    /// The name Kafka clients use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// A user name and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: Secret,
}

/// A Kafka SASL login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslLogin {
    pub mechanism: SaslMechanism,
    pub login: Login,
}

/// TLS to a server: the server's certificate is checked against `ca` (a PEM file), or against the
/// system's trusted roots when it is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    pub ca: Option<PathBuf>,
}

/// How the Kafka clients connect: Kafka's four security protocols are the four combinations of these
/// two (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaSecurity {
    pub sasl: Option<SaslLogin>,
    pub tls: Option<Tls>,
}

impl KafkaSecurity {
    /// Kafka's name of the security protocol.
    pub fn protocol(&self) -> &'static str {
        match (&self.sasl, &self.tls) {
            (None, None) => "PLAINTEXT",
            (None, Some(_)) => "SSL",
            (Some(_), None) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        }
    }

    /// Builds it from the operator's settings: `protocol` as Kafka names it (any case; `None`: SASL when
    /// a user name is given, TLS when a CA file is), the mechanism, the login, the CA file.
    pub fn from_settings(
        protocol: Option<&str>,
        mechanism: Option<SaslMechanism>,
        username: Option<&str>,
        password: Option<Secret>,
        ca: Option<PathBuf>,
    ) -> Result<Self, String> {
        let username = username.map(str::trim).filter(|u| !u.is_empty());
        let (sasl, tls) = match protocol.map(|p| p.trim().to_ascii_uppercase().replace('-', "_")) {
            None => (username.is_some(), ca.is_some()),
            Some(p) => match p.as_str() {
                "PLAINTEXT" => (false, false),
                "SSL" => (false, true),
                "SASL_PLAINTEXT" => (true, false),
                "SASL_SSL" => (true, true),
                _ => {
                    return Err(format!(
                        "{p:?}: the Kafka security protocol is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
                    ));
                }
            },
        };
        let sasl = match (sasl, username, password) {
            (true, Some(u), Some(p)) => Some(SaslLogin {
                mechanism: mechanism.unwrap_or_default(),
                login: Login { username: u.to_owned(), password: p },
            }),
            (true, None, _) => {
                return Err("a SASL security protocol needs a user name (ORDERFLOW_KAFKA_USERNAME)".into());
            }
            (true, Some(_), None) => {
                return Err("a SASL security protocol needs a password (ORDERFLOW_KAFKA_PASSWORD)".into());
            }
            (false, Some(_), _) => {
                return Err(format!(
                    "a Kafka user name is set but the security protocol is {}: use SASL_PLAINTEXT or SASL_SSL",
                    if tls { "SSL" } else { "PLAINTEXT" }
                ));
            }
            (false, None, _) => None,
        };
        if sasl.as_ref().is_some_and(|s| s.mechanism == SaslMechanism::Plain) && !tls {
            return Err("SASL PLAIN sends the password in the clear: use it with SASL_SSL, or use SCRAM".into());
        }
        if ca.is_some() && !tls {
            return Err("a Kafka CA file is set but the security protocol has no TLS: use SSL or SASL_SSL".into());
        }
        Ok(Self { sasl, tls: tls.then_some(Tls { ca }) })
    }
}

/// How the CQL driver connects: an optional password login (`PasswordAuthenticator`) and optional TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CqlSecurity {
    pub login: Option<Login>,
    pub tls: Option<Tls>,
}

impl CqlSecurity {
    /// Builds it from the operator's settings: a user name needs a password and the reverse; TLS is on when
    /// `tls` is set (with `ca`, that CA file).
    pub fn from_settings(
        username: Option<&str>,
        password: Option<Secret>,
        tls: bool,
        ca: Option<PathBuf>,
    ) -> Result<Self, String> {
        let username = username.map(str::trim).filter(|u| !u.is_empty());
        let login = match (username, password) {
            (Some(u), Some(p)) => Some(Login { username: u.to_owned(), password: p }),
            (None, None) => None,
            (Some(_), None) => return Err("a CQL user name needs a password (ORDERFLOW_CQL_PASSWORD)".into()),
            (None, Some(_)) => return Err("a CQL password needs a user name (ORDERFLOW_CQL_USERNAME)".into()),
        };
        let tls = (tls || ca.is_some()).then_some(Tls { ca });
        Ok(Self { login, tls })
    }
}

/// How orderflow logs in to Kafka and to the CQL database and checks them (SASL, passwords, TLS). The
/// passwords come from the environment only, never a flag, so they do not show in `ps` or shell history.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Connections {
    /// Kafka's security protocol: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`. Unset: SASL when
    /// `--kafka-username` is set, TLS when `--kafka-ssl-ca` is.
    #[arg(long, env = "ORDERFLOW_KAFKA_SECURITY_PROTOCOL", global = true)]
    pub kafka_security_protocol: Option<String>,

    /// The SASL mechanism: `SCRAM-SHA-512` (the default), `SCRAM-SHA-256`, or `PLAIN` (over TLS only).
    #[arg(long, env = "ORDERFLOW_KAFKA_SASL_MECHANISM", value_parser = SaslMechanism::parse, global = true)]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// The Kafka SASL user; its password is `ORDERFLOW_KAFKA_PASSWORD` (environment only).
    #[arg(long, env = "ORDERFLOW_KAFKA_USERNAME", global = true)]
    pub kafka_username: Option<String>,

    #[arg(skip = std::env::var("ORDERFLOW_KAFKA_PASSWORD").ok().filter(|p| !p.is_empty()).map(Secret::new))]
    pub kafka_password: Option<Secret>,

    /// A PEM file of the CA that signed the brokers' certificates (TLS). Unset with TLS: the system's
    /// trusted roots.
    #[arg(long, env = "ORDERFLOW_KAFKA_SSL_CA", global = true)]
    pub kafka_ssl_ca: Option<PathBuf>,

    /// The CQL user (`PasswordAuthenticator`); its password is `ORDERFLOW_CQL_PASSWORD` (environment only).
    #[arg(long, env = "ORDERFLOW_CQL_USERNAME", global = true)]
    pub cql_username: Option<String>,

    #[arg(skip = std::env::var("ORDERFLOW_CQL_PASSWORD").ok().filter(|p| !p.is_empty()).map(Secret::new))]
    pub cql_password: Option<Secret>,

    /// TLS to the CQL nodes (client-to-node encryption), checked against the system's trusted roots, or
    /// `--cql-tls-ca`.
    #[arg(long, env = "ORDERFLOW_CQL_TLS", global = true)]
    pub cql_tls: bool,

    /// A PEM file of the CA that signed the CQL nodes' certificates; turns TLS on.
    #[arg(long, env = "ORDERFLOW_CQL_TLS_CA", global = true)]
    pub cql_tls_ca: Option<PathBuf>,
}

impl Connections {
    /// The Kafka clients' security settings; an error names the setting to fix.
    pub fn kafka_security(&self) -> Result<KafkaSecurity, String> {
        readable(self.kafka_ssl_ca.as_deref(), "--kafka-ssl-ca (ORDERFLOW_KAFKA_SSL_CA)")?;
        KafkaSecurity::from_settings(
            self.kafka_security_protocol.as_deref(),
            self.kafka_sasl_mechanism,
            self.kafka_username.as_deref(),
            self.kafka_password.clone(),
            self.kafka_ssl_ca.clone(),
        )
        .map_err(|e| format!("Kafka connection settings: {e}"))
    }

    /// The CQL driver's security settings; an error names the setting to fix.
    pub fn cql_security(&self) -> Result<CqlSecurity, String> {
        readable(self.cql_tls_ca.as_deref(), "--cql-tls-ca (ORDERFLOW_CQL_TLS_CA)")?;
        CqlSecurity::from_settings(
            self.cql_username.as_deref(),
            self.cql_password.clone(),
            self.cql_tls,
            self.cql_tls_ca.clone(),
        )
        .map_err(|e| format!("CQL connection settings: {e}"))
    }
}

/// A CA file named in the settings must be readable now: a typo is a configuration error at start, not a
/// server that seems unreachable.
fn readable(path: Option<&std::path::Path>, setting: &str) -> Result<(), String> {
    match path {
        Some(p) => std::fs::metadata(p).map(|_| ()).map_err(|e| format!("{setting}: {}: {e}", p.display())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_follows_from_what_is_given() {
        let pw = || Some(Secret::new("pw"));
        let plain = KafkaSecurity::from_settings(None, None, None, None, None).unwrap();
        assert_eq!(plain.protocol(), "PLAINTEXT");
        let sasl = KafkaSecurity::from_settings(None, None, Some("app"), pw(), None).unwrap();
        assert_eq!(sasl.protocol(), "SASL_PLAINTEXT");
        assert_eq!(sasl.sasl.unwrap().mechanism, SaslMechanism::ScramSha512);
        let sasl_ssl = KafkaSecurity::from_settings(None, None, Some("app"), pw(), Some("/ca.pem".into())).unwrap();
        assert_eq!(sasl_ssl.protocol(), "SASL_SSL");
        let ssl = KafkaSecurity::from_settings(Some("ssl"), None, None, None, None).unwrap();
        assert_eq!((ssl.protocol(), ssl.tls), ("SSL", Some(Tls { ca: None })));
    }

    #[test]
    fn contradictions_are_refused_with_the_fix() {
        let pw = || Some(Secret::new("pw"));
        let e = KafkaSecurity::from_settings(Some("sasl_ssl"), None, None, None, None).unwrap_err();
        assert!(e.contains("ORDERFLOW_KAFKA_USERNAME"), "{e}");
        let e = KafkaSecurity::from_settings(Some("SASL_PLAINTEXT"), None, Some("app"), None, None).unwrap_err();
        assert!(e.contains("ORDERFLOW_KAFKA_PASSWORD"), "{e}");
        let e = KafkaSecurity::from_settings(Some("plaintext"), None, Some("app"), pw(), None).unwrap_err();
        assert!(e.contains("SASL_PLAINTEXT"), "{e}");
        let e = KafkaSecurity::from_settings(None, Some(SaslMechanism::Plain), Some("app"), pw(), None).unwrap_err();
        assert!(e.contains("in the clear"), "{e}");
        let e = KafkaSecurity::from_settings(Some("PLAINTEXT"), None, None, None, Some("/ca.pem".into())).unwrap_err();
        assert!(e.contains("TLS"), "{e}");
        assert!(KafkaSecurity::from_settings(Some("kerberos"), None, None, None, None).is_err());
        assert!(CqlSecurity::from_settings(Some("app"), None, false, None).is_err());
        assert!(CqlSecurity::from_settings(None, pw(), false, None).is_err());
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let s =
            KafkaSecurity::from_settings(None, None, Some("app"), Some(Secret::new("hunter2-hunter2")), None).unwrap();
        let c = CqlSecurity::from_settings(Some("app"), Some(Secret::new("hunter2-hunter2")), true, None).unwrap();
        assert!(!format!("{s:?}{c:?}").contains("hunter2"));
        assert_eq!(SaslMechanism::parse("scram_sha_256"), Ok(SaslMechanism::ScramSha256));
    }
}
