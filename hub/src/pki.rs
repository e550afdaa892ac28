//! The chain's certificate authority and the hub's own keys, as files in
//! one directory (`wan.pki_dir`, default `{data_dir}/pki`), and the
//! issuing of store and hub certificates.
//!
//! | file | what | secret |
//! |---|---|---|
//! | `chain.toml` | the chain's name (the CA's subject) | no |
//! | `ca.pem` | the chain CA certificate | no |
//! | `ca.key` | its private key: needed only to issue and revoke; keep it offline in production | **yes** |
//! | `hub-signing.key` | the hub's Ed25519 message signing key (every replica needs it) | **yes** |
//! | `hub-server.pem`, `.key` | the embedded broker's TLS certificate (`broker.tls_listen`) | key: yes |
//! | `hub-client.pem`, `.key` | the hub's TLS client certificate for an external `mqtts://` broker | key: yes |
//!
//! Certificates are ECDSA P-256 (every broker's TLS stack speaks it);
//! message signing keys are Ed25519 ([`storegate_protocol::seal`]). A store
//! certificate's common name is the store id: Mosquitto and EMQX take it as
//! the username their ACLs match, and the embedded broker's gate maps the
//! certificate's fingerprint to the credential in the database.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use storegate_protocol::StoreId;
use storegate_protocol::bundle::{BUNDLE_FORMAT, StoreBundle};
use storegate_protocol::seal::{PublicKey, SigningKey, pkcs8_from_pem, pkcs8_to_pem};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `hub ca init` on a directory that already has a CA.
    #[error("{0} already holds a chain CA; refusing to overwrite it")]
    Exists(PathBuf),
    /// No CA where one was expected.
    #[error("no chain CA in {0}: create one with `hub ca init` (or point `wan.pki_dir` at it)")]
    Missing(PathBuf),
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A key file is unusable.
    #[error("{path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A name is not allowed.
    #[error("{0}")]
    Invalid(String),
}

/// The files of a PKI directory.
#[derive(Debug, Clone)]
pub struct PkiDir(pub PathBuf);

impl PkiDir {
    /// `chain.toml`.
    pub fn chain(&self) -> PathBuf {
        self.0.join("chain.toml")
    }
    /// `ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// `hub-signing.key`.
    pub fn hub_signing_key(&self) -> PathBuf {
        self.0.join("hub-signing.key")
    }
    /// `hub-signing.pub`: its public key (base64), all provisioning needs.
    pub fn hub_public_key(&self) -> PathBuf {
        self.0.join("hub-signing.pub")
    }
    /// `hub-server.pem`.
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("hub-server.pem")
    }
    /// `hub-server.key`.
    pub fn server_key(&self) -> PathBuf {
        self.0.join("hub-server.key")
    }
    /// `hub-client.pem`.
    pub fn client_cert(&self) -> PathBuf {
        self.0.join("hub-client.pem")
    }
    /// `hub-client.key`.
    pub fn client_key(&self) -> PathBuf {
        self.0.join("hub-client.key")
    }
    /// Whether a CA certificate is there.
    pub fn exists(&self) -> bool {
        self.ca_cert().exists()
    }
}

/// A certificate and key just issued.
#[derive(Clone)]
pub struct Issued {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
    /// SHA-256 of the certificate's DER, hex.
    pub sha256: String,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, ms since the epoch.
    pub not_after_ms: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("sha256", &self.sha256)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client (a store, or the hub towards an external broker).
    Client,
    /// A TLS server (the embedded broker's gate).
    Server,
}

/// The chain CA, with its private key (able to issue).
pub struct Ca {
    /// The chain's name (the CA certificate's O).
    pub chain: String,
    /// The CA's key pair.
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// Days a CA certificate is valid.
const CA_DAYS: i64 = 20 * 365;

fn ca_params(chain: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "storegate chain CA");
    dn.push(DnType::OrganizationName, chain);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

fn now_ms() -> i64 {
    crate::db::now_ms()
}

fn at_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7F; // positive
    b[0] |= 0x01; // and 16 bytes long in DER
    SerialNumber::from_slice(&b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of a certificate's DER, hex: how the gate and the database name
/// a store certificate.
pub fn cert_sha256(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

impl Ca {
    /// A new CA (in memory) for the chain called `chain`.
    pub fn generate(chain: &str) -> Result<Ca, PkiError> {
        if chain.trim().is_empty() {
            return Err(PkiError::Invalid("the chain name must not be empty".into()));
        }
        let key = KeyPair::generate()?;
        let mut params = ca_params(chain);
        params.not_before = at_ms(now_ms() - 3_600_000);
        params.not_after = at_ms(now_ms() + CA_DAYS * 86_400_000);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            chain: chain.to_owned(),
            key,
            cert_pem: cert.pem(),
        })
    }

    /// Loads the CA (certificate, key and chain name) from `dir`.
    pub fn load(dir: &PkiDir) -> Result<Ca, PkiError> {
        if !dir.exists() {
            return Err(PkiError::Missing(dir.0.clone()));
        }
        let chain_text = read(&dir.chain())?;
        let chain = toml::from_str::<ChainFile>(&chain_text)
            .map_err(|e| PkiError::Key {
                path: dir.chain(),
                message: e.to_string(),
            })?
            .chain;
        let key_pem = read(&dir.ca_key())?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Key {
            path: dir.ca_key(),
            message: e.to_string(),
        })?;
        Ok(Ca {
            chain,
            key,
            cert_pem: read(&dir.ca_cert())?,
        })
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(&self.chain), &self.key)
    }

    /// Issues a certificate with common name `cn` (and these DNS names or
    /// IPs, for a server) valid for `days`.
    pub fn issue(&self, cn: &str, sans: &[String], usage: Usage, days: i64) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, self.chain.as_str());
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![match usage {
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        p.use_authority_key_identifier_extension = true;
        let not_after_ms = now_ms() + days.max(1) * 86_400_000;
        p.not_before = at_ms(now_ms() - 3_600_000);
        p.not_after = at_ms(not_after_ms);
        let serial = random_serial();
        p.serial_number = Some(serial.clone());
        let cert = p.signed_by(&key, &self.issuer())?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            sha256: cert_sha256(cert.der()),
            serial: hex(serial.as_ref()),
            not_after_ms,
        })
    }

    /// A CRL (PEM) listing `revoked` (serial hex, revoked at ms), valid for
    /// `days`, numbered `number` (it must grow).
    pub fn crl(&self, revoked: &[(String, i64)], number: u64, days: i64) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update: at_ms(now_ms()),
            next_update: at_ms(now_ms() + days.max(1) * 86_400_000),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .filter_map(|(serial, at)| {
                    Some(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&unhex(serial)?),
                        revocation_time: at_ms(*at),
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer())?.pem()?)
    }

    /// Writes the CA (certificate, key, chain name) into `dir`; refuses to
    /// overwrite one.
    pub fn write(&self, dir: &PkiDir) -> Result<(), PkiError> {
        if dir.exists() {
            return Err(PkiError::Exists(dir.0.clone()));
        }
        create_dir(&dir.0)?;
        write_public(
            &dir.chain(),
            &toml::to_string(&ChainFile {
                chain: self.chain.clone(),
            })
            .unwrap_or_default(),
        )?;
        write_secret(&dir.ca_key(), &self.key.serialize_pem())?;
        write_public(&dir.ca_cert(), &self.cert_pem)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ChainFile {
    chain: String,
}

/// What `hub ca init` made.
#[derive(Debug)]
pub struct InitReport {
    /// The directory.
    pub dir: PathBuf,
    /// The hub's signing key id.
    pub hub_key: String,
    /// The hub replicas' shared-subscription group.
    pub share_group: String,
}

/// Creates a PKI in `dir`: the chain CA, the hub's signing key, the
/// embedded broker's server certificate (for `server_names`) and the hub's
/// client certificate (common name `hub_name`).
pub fn init(
    dir: &PkiDir,
    chain: &str,
    server_names: &[String],
    hub_name: &str,
) -> Result<InitReport, PkiError> {
    if dir.exists() {
        return Err(PkiError::Exists(dir.0.clone()));
    }
    check_hub_name(hub_name)?;
    let ca = Ca::generate(chain)?;
    let (signing, der) = SigningKey::generate().map_err(|e| PkiError::Invalid(e.to_string()))?;
    let server = ca.issue("storegate hub", server_names, Usage::Server, 825)?;
    let client = ca.issue(hub_name, &[], Usage::Client, 825)?;
    ca.write(dir)?;
    write_secret(&dir.hub_signing_key(), &pkcs8_to_pem(&der))?;
    write_public(
        &dir.hub_public_key(),
        &format!("{}\n", signing.public().to_base64()),
    )?;
    write_public(&dir.server_cert(), &server.cert_pem)?;
    write_secret(&dir.server_key(), &server.key_pem)?;
    write_public(&dir.client_cert(), &client.cert_pem)?;
    write_secret(&dir.client_key(), &client.key_pem)?;
    Ok(InitReport {
        dir: dir.0.clone(),
        hub_key: signing.kid().to_string(),
        share_group: share_group(&signing),
    })
}

/// The hub's public signing key: from `hub-signing.pub` if there (a
/// provisioning machine needs nothing secret of the hub's), else from the
/// private key file.
pub fn load_hub_public_key(dir: &PkiDir, signing_key: Option<&Path>) -> Result<PublicKey, PkiError> {
    let pub_path = dir.hub_public_key();
    if signing_key.is_none() && pub_path.exists() {
        let text = read(&pub_path)?;
        return PublicKey::from_base64(&text).map_err(|e| PkiError::Key {
            path: pub_path,
            message: e.to_string(),
        });
    }
    let key_path = signing_key.map_or_else(|| dir.hub_signing_key(), Path::to_path_buf);
    Ok(load_signing_key(&key_path)?.public())
}

/// Checks a hub identity's name (its client certificate's common name):
/// it must start with "hub", which no store id may (see
/// [`check_store_id`]), so an ACL entry for it can never match a store.
pub fn check_hub_name(name: &str) -> Result<(), PkiError> {
    let ok = name.to_ascii_lowercase().starts_with("hub")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "hub name {name:?} must start with \"hub\" (as hub-1, hub-2), in A-Z a-z 0-9 - _ ."
        )))
    }
}

/// Loads the hub's message signing key.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    let pem = read(path)?;
    let der = pkcs8_from_pem(&pem).map_err(|e| PkiError::Key {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    SigningKey::from_pkcs8(&der).map_err(|e| PkiError::Key {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The public facts of a store credential (what the database keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFacts {
    /// The store.
    pub store: StoreId,
    /// Its signing public key.
    pub signing_key: PublicKey,
    /// SHA-256 of its certificate, hex.
    pub cert_sha256: String,
    /// Certificate serial, hex.
    pub cert_serial: String,
    /// Expiry.
    pub not_after_ms: i64,
}

/// Store ids that could pass for a hub identity at a broker that takes the
/// certificate's common name as the client id (Mosquitto's
/// `use_username_as_clientid`) are refused.
pub fn check_store_id(store: &StoreId) -> Result<(), PkiError> {
    if store.as_str().to_ascii_lowercase().starts_with("hub") {
        return Err(PkiError::Invalid(format!(
            "store id {} starts with \"hub\", which names hub identities at the broker; choose another",
            store.as_str()
        )));
    }
    Ok(())
}

/// Issues a new credential for `store`: a client certificate, a signing
/// key, and the bundle that carries them with the CA, the hub's keys and
/// the broker address.
pub fn issue_store(
    ca: &Ca,
    hub_keys: &[PublicKey],
    store: &StoreId,
    broker: &str,
    days: i64,
) -> Result<(StoreBundle, CredentialFacts), PkiError> {
    check_store_id(store)?;
    storegate_protocol::endpoint::BrokerUrl::parse(broker).map_err(PkiError::Invalid)?;
    let cert = ca.issue(store.as_str(), &[], Usage::Client, days)?;
    let (signing, der) = SigningKey::generate().map_err(|e| PkiError::Invalid(e.to_string()))?;
    let bundle = StoreBundle {
        format: BUNDLE_FORMAT,
        store_id: store.to_string(),
        broker: broker.to_owned(),
        credential: signing.kid().to_string(),
        issued_at_ms: now_ms(),
        not_after_ms: cert.not_after_ms,
        ca_pem: ca.cert_pem.clone(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        signing_key_pem: pkcs8_to_pem(&der),
        hub_keys: hub_keys.iter().map(PublicKey::to_base64).collect(),
    };
    let facts = CredentialFacts {
        store: store.clone(),
        signing_key: signing.public(),
        cert_sha256: cert.sha256,
        cert_serial: cert.serial,
        not_after_ms: cert.not_after_ms,
    };
    Ok((bundle, facts))
}

/// The hub's runtime identity: its signing key, the CA it trusts, and its
/// TLS certificates where configured.
#[derive(Debug, Clone)]
pub struct HubIdentity {
    /// Signs everything the hub sends to stores.
    pub signing: Arc<SigningKey>,
    /// The chain CA certificate (PEM).
    pub ca_pem: String,
}

impl HubIdentity {
    /// The hub replicas' shared-subscription group: derived from the hub
    /// key, so every replica computes the same name and no store can.
    pub fn share_group(&self) -> String {
        share_group(&self.signing)
    }
}

/// The shared-subscription group of hubs holding `key`.
pub fn share_group(key: &SigningKey) -> String {
    format!("hub-{}", key.secret_name("share-group"))
}

/// Reads a key or certificate file.
pub fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a secret: a new file readable by its owner only (an existing
/// file is not overwritten).
pub fn write_secret(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_store_bundles_and_reloads_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir(dir.path().join("pki"));
        let report = init(
            &pki,
            "Acme Retail",
            &["localhost".into(), "127.0.0.1".into()],
            "hub-1",
        )
        .unwrap();
        assert!(matches!(
            init(&pki, "Acme Retail", &[], "hub-1"),
            Err(PkiError::Exists(_))
        ));
        let hub = load_signing_key(&pki.hub_signing_key()).unwrap();
        assert_eq!(hub.kid().to_string(), report.hub_key);
        assert_eq!(
            load_hub_public_key(&pki, None).unwrap(),
            hub.public(),
            "from hub-signing.pub"
        );
        assert_eq!(report.share_group, share_group(&hub));
        let ca = Ca::load(&pki).unwrap();
        let store = StoreId::parse("store-0001").unwrap();
        let (bundle, facts) =
            issue_store(&ca, &[hub.public()], &store, "mqtts://localhost:8883", 30).unwrap();
        let keys = bundle.keys().unwrap();
        assert_eq!(keys.signing.public(), facts.signing_key);
        assert_eq!(keys.hub_keys, vec![hub.public()]);
        assert!(bundle.cert_pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(facts.cert_serial.len(), 32);
        let crl = ca.crl(&[(facts.cert_serial.clone(), 1_000)], 1, 7).unwrap();
        assert!(crl.contains("X509 CRL"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pki.ca_key()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the CA key is private");
        }
    }

    #[test]
    fn hub_names_must_look_like_hubs() {
        assert!(check_hub_name("hub-2").is_ok());
        assert!(check_hub_name("replica-2").is_err());
        assert!(check_hub_name("hub/2").is_err());
    }

    #[test]
    fn store_ids_that_look_like_hubs_are_refused() {
        assert!(check_store_id(&StoreId::parse("hub-2").unwrap()).is_err());
        assert!(check_store_id(&StoreId::parse("HUB").unwrap()).is_err());
        assert!(check_store_id(&StoreId::parse("store-hub").unwrap()).is_ok());
    }
}
