//! End-to-end message authentication on the WAN: every edge <-> hub message
//! is signed by its sender's key and bound to the topic it travels on, so a
//! broker (misconfigured, shared or compromised) can neither forge, alter
//! nor redirect one.
//!
//! # Keys
//!
//! Ed25519. Each store credential has a signing key (in the store's bundle,
//! never at the hub: the hub keeps only the public key); the hub has one
//! signing key whose public key is in every store's bundle. A key is named
//! on the wire by its [`KeyId`], the first 8 bytes of the SHA-256 of the
//! public key.
//!
//! # Envelope v2 (signed)
//!
//! ```text
//! varint(2) | key id (8 bytes) | varint(n) | body (n bytes) | signature (64 bytes)
//! ```
//!
//! `body` is the postcard [`Message`](crate::envelope::Message), exactly as
//! version 1 carried it after its version varint. The signature is Ed25519
//! over `"storegate/wan/v2\0" || SHA-256(varint(len(topic)) || topic ||
//! everything before the signature)`. Binding the topic binds the store and
//! the direction: a store's genuine `up` message replayed on another
//! store's topic, or a hub `ack` moved to `down`, fails verification.
//! Nothing may follow the signature.
//!
//! Which party may sign for a topic is fixed by the topic
//! ([`WanTopic::sender`]): the hub for `ack`, `down`, `rpc/edge/res`,
//! `rpc/hub/req`; the topic's own store for `up`, `status`, `rpc/edge/req`,
//! `rpc/hub/res`. [`open`] checks both the signature and that the key
//! belongs to that party.
//!
//! Replays of a party's own messages on the same topic are left to the
//! sync contract, which is idempotent by seq: an old batch is a duplicate,
//! an old ack or downlink is at or below what was already applied, an old
//! RPC answer matches no pending request.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

use crate::envelope::DecodeError;
use crate::ids::StoreId;
use crate::topic::{Sender, WanTopic};

/// The envelope version of a signed message.
pub const SIGNED_VERSION: u16 = 2;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Domain separation: these signatures mean nothing anywhere else.
const DOMAIN: &[u8] = b"storegate/wan/v2\0";

/// Names a signing key on the wire: the first 8 bytes of SHA-256 of its
/// public key. Shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// Parses 16 hex digits.
    pub fn parse(s: &str) -> Result<KeyId, KeyError> {
        let s = s.trim();
        let bad = || KeyError::BadKeyId(s.to_owned());
        let b = s.as_bytes();
        if b.len() != 16 || !b.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        };
        let mut out = [0u8; 8];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        }
        Ok(KeyId(out))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key or key id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 16 hex digits.
    #[error("key id {0:?} is not 16 hex digits")]
    BadKeyId(String),
    /// Not base64 of 32 bytes.
    #[error("public key is not base64 of 32 bytes")]
    BadPublicKey,
    /// Not an Ed25519 PKCS#8 document.
    #[error("signing key is not an Ed25519 PKCS#8 key: {0}")]
    BadSigningKey(String),
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Its key id.
    pub fn kid(&self) -> KeyId {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.as_ref()[..8]);
        KeyId(id)
    }

    /// Base64 (standard alphabet, padded), as bundles and the database keep it.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Parses [`PublicKey::to_base64`]'s output.
    pub fn from_base64(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = B64.decode(s.trim()).map_err(|_| KeyError::BadPublicKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadPublicKey)?;
        Ok(PublicKey(arr))
    }

    /// Checks `sig` over `message`.
    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, sig)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kid())
    }
}

/// An Ed25519 signing key (a store credential's or the hub's).
pub struct SigningKey {
    /// The key pair.
    pair: Ed25519KeyPair,
    /// Its public half.
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.kid())
    }
}

impl SigningKey {
    /// A new random key, and its PKCS#8 document (the secret to keep).
    pub fn generate() -> Result<(SigningKey, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::BadSigningKey(e.to_string()))?;
        let key = SigningKey::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// Loads a PKCS#8 document (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| KeyError::BadSigningKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    /// A key from a fixed seed: for golden tests only (a seed is a secret).
    pub fn from_seed_for_tests(seed: &[u8; 32]) -> SigningKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32-byte seed is an Ed25519 key");
        Self::from_pair(pair)
    }

    fn from_pair(pair: Ed25519KeyPair) -> SigningKey {
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        SigningKey {
            pair,
            public: PublicKey(public),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Its key id.
    pub fn kid(&self) -> KeyId {
        self.public.kid()
    }

    /// A name only holders of this key can compute: a hash of the key's
    /// (deterministic) signature over a fixed label. Hub replicas, which
    /// share the hub key, name their shared-subscription group with it.
    pub fn secret_name(&self, label: &str) -> String {
        let sig = self.pair.sign(&[DOMAIN, label.as_bytes()].concat());
        let d = ring::digest::digest(&ring::digest::SHA256, sig.as_ref());
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Who may sign a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Party {
    /// The hub (any replica: they share the hub's key).
    Hub,
    /// One store.
    Store(StoreId),
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Hub => f.write_str("hub"),
            Party::Store(s) => write!(f, "store {s}"),
        }
    }
}

/// What a receiver knows of a key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    /// A live key of this party.
    Active(Party, PublicKey),
    /// A key that was revoked (its party, for the log).
    Revoked(Party),
    /// Never heard of.
    Unknown,
}

/// Where a receiver looks keys up.
pub trait Keyring {
    /// What is known of `kid`.
    fn lookup(&self, kid: &KeyId) -> KeyStatus;
}

/// Why a message was refused. Each has a short name for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a well-formed envelope.
    #[error("malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// A version 1 (unsigned) envelope where signatures are required.
    #[error("unsigned message")]
    Unsigned,
    /// Signed by a key this receiver does not know.
    #[error("signed by unknown key {0}")]
    UnknownKey(KeyId),
    /// Signed by a revoked key.
    #[error("signed by revoked key {kid} of {party}")]
    Revoked {
        /// The key.
        kid: KeyId,
        /// Whose it was.
        party: Party,
    },
    /// Signed by a valid key of someone who may not send on this topic.
    #[error("signed by {got} (key {kid}) on a topic only {expected} may send on")]
    WrongParty {
        /// The key.
        kid: KeyId,
        /// Whose it is.
        got: Party,
        /// Who may send here.
        expected: Party,
    },
    /// The signature does not match the bytes and topic.
    #[error("bad signature (key {0})")]
    BadSignature(KeyId),
}

impl Refusal {
    /// Short, stable name for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::Revoked { .. } => "revoked",
            Refusal::WrongParty { .. } => "wrong_party",
            Refusal::BadSignature(_) => "bad_signature",
        }
    }
}

/// An envelope split into its parts, not yet verified.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    /// Version 1: no signature.
    Unsigned {
        /// The postcard message.
        body: &'a [u8],
    },
    /// Version 2.
    Signed(Signed<'a>),
}

impl<'a> Frame<'a> {
    /// The message bytes, verified or not.
    pub fn body(&self) -> &'a [u8] {
        match self {
            Frame::Unsigned { body } => body,
            Frame::Signed(s) => s.body,
        }
    }
}

/// A version 2 envelope's parts.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The signer's key id.
    pub kid: KeyId,
    /// The postcard message.
    pub body: &'a [u8],
    /// Everything before the signature.
    signed: &'a [u8],
    /// The signature.
    sig: &'a [u8],
}

impl Signed<'_> {
    /// Whether `key` signed these bytes for `topic`.
    pub fn verify(&self, key: &PublicKey, topic: &str) -> bool {
        key.verify(&signed_message(topic, self.signed), self.sig)
    }
}

/// What the signature covers: the domain and a digest of the topic and bytes.
fn signed_message(topic: &str, signed: &[u8]) -> [u8; DOMAIN.len() + 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = Vec::with_capacity(3);
    push_varint(&mut len, topic.len() as u64);
    ctx.update(&len);
    ctx.update(topic.as_bytes());
    ctx.update(signed);
    let digest = ctx.finish();
    let mut out = [0u8; DOMAIN.len() + 32];
    out[..DOMAIN.len()].copy_from_slice(DOMAIN);
    out[DOMAIN.len()..].copy_from_slice(digest.as_ref());
    out
}

/// Wraps a message body (see [`crate::envelope::encode_body`]) in a signed
/// envelope for `topic`.
pub fn seal(key: &SigningKey, topic: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16 + SIGNATURE_LEN);
    push_varint(&mut out, u64::from(SIGNED_VERSION));
    out.extend_from_slice(&key.kid().0);
    push_varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    let sig = key.pair.sign(&signed_message(topic, &out));
    out.extend_from_slice(sig.as_ref());
    out
}

/// Splits an envelope of either version without verifying it.
pub fn frame(bytes: &[u8]) -> Result<Frame<'_>, DecodeError> {
    use crate::envelope::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|e| DecodeError::Malformed(format!("version: {e}")))?;
    match version {
        1 => Ok(Frame::Unsigned { body: rest }),
        SIGNED_VERSION => {
            let malformed = |what: &str| DecodeError::Malformed(format!("signed envelope: {what}"));
            let (kid, rest) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| malformed("no key id"))?;
            let (len, rest) =
                postcard::take_from_bytes::<u64>(rest).map_err(|_| malformed("no body length"))?;
            let len = usize::try_from(len).map_err(|_| malformed("body length"))?;
            let needed = len
                .checked_add(SIGNATURE_LEN)
                .ok_or_else(|| malformed("body length"))?;
            if rest.len() != needed {
                return Err(malformed(&format!(
                    "{} bytes after the header, {needed} expected",
                    rest.len()
                )));
            }
            let (body, sig) = rest.split_at(len);
            let signed_len = bytes.len() - SIGNATURE_LEN;
            Ok(Frame::Signed(Signed {
                kid: KeyId(*kid),
                body,
                signed: &bytes[..signed_len],
                sig,
            }))
        }
        found => Err(DecodeError::UnsupportedVersion {
            found,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        }),
    }
}

/// Verifies an envelope received on `topic` and returns its message body:
/// the signer's key must be known, live, belong to the party that may send
/// on this topic, and have signed these bytes for this topic. A version 1
/// envelope passes only if `accept_unsigned` (the insecure mode).
pub fn open<'a>(
    bytes: &'a [u8],
    topic: &WanTopic,
    topic_text: &str,
    keys: &dyn Keyring,
    accept_unsigned: bool,
) -> Result<&'a [u8], Refusal> {
    match frame(bytes)? {
        Frame::Unsigned { body } if accept_unsigned => Ok(body),
        Frame::Unsigned { .. } => Err(Refusal::Unsigned),
        Frame::Signed(s) => {
            let expected = match topic.sender() {
                Sender::Hub => Party::Hub,
                Sender::Store => Party::Store(topic.store().clone()),
            };
            match keys.lookup(&s.kid) {
                KeyStatus::Unknown => Err(Refusal::UnknownKey(s.kid)),
                KeyStatus::Revoked(party) => Err(Refusal::Revoked { kid: s.kid, party }),
                KeyStatus::Active(got, _) if got != expected => Err(Refusal::WrongParty {
                    kid: s.kid,
                    got,
                    expected,
                }),
                KeyStatus::Active(_, key) => {
                    if s.verify(&key, topic_text) {
                        Ok(s.body)
                    } else {
                        Err(Refusal::BadSignature(s.kid))
                    }
                }
            }
        }
    }
}

/// One side's way of sending: sign with its key, or (the insecure mode,
/// `None`) send version 1 envelopes unsigned.
#[derive(Debug, Clone)]
pub struct Sealer {
    /// The signing key; `None` sends unsigned.
    key: Option<std::sync::Arc<SigningKey>>,
}

impl Sealer {
    /// Signs with `key`.
    pub fn signing(key: std::sync::Arc<SigningKey>) -> Sealer {
        Sealer { key: Some(key) }
    }

    /// Sends unsigned (version 1): only for a deliberately insecure setup.
    pub fn unsigned() -> Sealer {
        Sealer { key: None }
    }

    /// The key id, if signing.
    pub fn kid(&self) -> Option<KeyId> {
        self.key.as_ref().map(|k| k.kid())
    }

    /// The envelope of `body` for `topic`.
    pub fn seal_body(&self, topic: &str, body: &[u8]) -> Vec<u8> {
        match &self.key {
            Some(k) => seal(k, topic, body),
            None => {
                let mut out = Vec::with_capacity(body.len() + 1);
                push_varint(&mut out, 1);
                out.extend_from_slice(body);
                out
            }
        }
    }

    /// The envelope of `message` for `topic`.
    pub fn seal(&self, topic: &WanTopic, message: &crate::envelope::Message) -> Vec<u8> {
        self.seal_body(&topic.to_string(), &crate::envelope::encode_body(message))
    }
}

/// A fixed set of keys of one party: what an edge trusts (the hub's keys).
#[derive(Debug, Clone)]
pub struct StaticKeys {
    /// Whose keys these are.
    pub party: Party,
    /// The keys.
    pub keys: Vec<PublicKey>,
}

impl Keyring for StaticKeys {
    fn lookup(&self, kid: &KeyId) -> KeyStatus {
        self.keys
            .iter()
            .find(|k| k.kid() == *kid)
            .map_or(KeyStatus::Unknown, |k| KeyStatus::Active(self.party.clone(), *k))
    }
}

/// postcard's unsigned varint (LEB128).
pub(crate) fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// PEM text of a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
pub fn pkcs8_to_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// The DER inside a `PRIVATE KEY` PEM block.
pub fn pkcs8_from_pem(pem: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    if body.is_empty() {
        return Err(KeyError::BadSigningKey("no PRIVATE KEY PEM block".into()));
    }
    B64.decode(body)
        .map_err(|e| KeyError::BadSigningKey(format!("PEM base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{AppAck, Message, encode_body};
    use crate::ids::Seq;

    fn store(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    struct Ring(Vec<(Party, PublicKey)>, Vec<(Party, KeyId)>);
    impl Keyring for Ring {
        fn lookup(&self, kid: &KeyId) -> KeyStatus {
            if let Some((p, _)) = self.1.iter().find(|(_, k)| k == kid) {
                return KeyStatus::Revoked(p.clone());
            }
            self.0
                .iter()
                .find(|(_, k)| k.kid() == *kid)
                .map_or(KeyStatus::Unknown, |(p, k)| KeyStatus::Active(p.clone(), *k))
        }
    }

    fn ack_body(n: u64) -> Vec<u8> {
        encode_body(&Message::AppAck(AppAck {
            committed_up_to: Seq(n),
        }))
    }

    #[test]
    fn a_sealed_message_opens_only_on_its_topic_with_its_partys_key() {
        let hub = SigningKey::from_seed_for_tests(&[1; 32]);
        let a = SigningKey::from_seed_for_tests(&[2; 32]);
        let ring = Ring(
            vec![(Party::Hub, hub.public()), (Party::Store(store("a")), a.public())],
            vec![],
        );
        let ack_a = WanTopic::Ack(store("a"));
        let ack_b = WanTopic::Ack(store("b"));
        let body = ack_body(7);
        let sealed = seal(&hub, &ack_a.to_string(), &body);
        assert_eq!(
            open(&sealed, &ack_a, &ack_a.to_string(), &ring, false),
            Ok(&body[..])
        );
        // Redirected to another store's topic.
        assert_eq!(
            open(&sealed, &ack_b, &ack_b.to_string(), &ring, false),
            Err(Refusal::BadSignature(hub.kid()))
        );
        // A store key signing a hub topic.
        let forged = seal(&a, &ack_a.to_string(), &body);
        assert!(matches!(
            open(&forged, &ack_a, &ack_a.to_string(), &ring, false),
            Err(Refusal::WrongParty { .. })
        ));
        // Store a's key on store b's uplink.
        let up_b = WanTopic::Up(store("b"));
        let forged = seal(&a, &up_b.to_string(), &body);
        assert!(matches!(
            open(&forged, &up_b, &up_b.to_string(), &ring, false),
            Err(Refusal::WrongParty { .. })
        ));
        // Every single flipped bit is caught.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&bad, &ack_a, &ack_a.to_string(), &ring, false).is_err(),
                "byte {i}"
            );
        }
        // Truncated or extended.
        assert!(
            open(
                &sealed[..sealed.len() - 1],
                &ack_a,
                &ack_a.to_string(),
                &ring,
                false
            )
            .is_err()
        );
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&longer, &ack_a, &ack_a.to_string(), &ring, false).is_err());
    }

    #[test]
    fn unknown_revoked_and_unsigned_are_refused() {
        let hub = SigningKey::from_seed_for_tests(&[1; 32]);
        let stranger = SigningKey::from_seed_for_tests(&[3; 32]);
        let ring = Ring(vec![], vec![(Party::Hub, hub.kid())]);
        let t = WanTopic::Down(store("a"));
        let body = ack_body(1);
        assert_eq!(
            open(
                &seal(&stranger, &t.to_string(), &body),
                &t,
                &t.to_string(),
                &ring,
                false
            ),
            Err(Refusal::UnknownKey(stranger.kid()))
        );
        assert!(matches!(
            open(
                &seal(&hub, &t.to_string(), &body),
                &t,
                &t.to_string(),
                &ring,
                false
            ),
            Err(Refusal::Revoked { .. })
        ));
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&body);
        assert_eq!(
            open(&v1, &t, &t.to_string(), &ring, false),
            Err(Refusal::Unsigned)
        );
        assert_eq!(open(&v1, &t, &t.to_string(), &ring, true), Ok(&body[..]));
        assert!(matches!(
            open(&[3, 0], &t, &t.to_string(), &ring, true),
            Err(Refusal::Malformed(DecodeError::UnsupportedVersion {
                found: 3,
                ..
            }))
        ));
    }

    #[test]
    fn a_secret_name_is_stable_per_key_and_differs_between_keys() {
        let a = SigningKey::from_seed_for_tests(&[1; 32]);
        let b = SigningKey::from_seed_for_tests(&[2; 32]);
        assert_eq!(a.secret_name("share"), a.secret_name("share"));
        assert_ne!(a.secret_name("share"), b.secret_name("share"));
        assert_ne!(a.secret_name("share"), a.secret_name("other"));
        assert_eq!(a.secret_name("share").len(), 16);
    }

    #[test]
    fn keys_round_trip_through_text() {
        let (k, der) = SigningKey::generate().unwrap();
        let pem = pkcs8_to_pem(&der);
        let back = SigningKey::from_pkcs8(&pkcs8_from_pem(&pem).unwrap()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(PublicKey::from_base64(&k.public().to_base64()), Ok(k.public()));
        assert_eq!(KeyId::parse(&k.kid().to_string()), Ok(k.kid()));
        assert!(KeyId::parse("xyz").is_err());
        assert!(KeyId::parse("+123456789abcdef").is_err(), "no sign");
        assert!(
            KeyId::parse("ééééééééé").is_err(),
            "multibyte text is refused, not sliced"
        );
        assert_eq!(KeyId::parse("00FF00ff00ff00ff"), KeyId::parse("00ff00ff00ff00ff"));
        assert!(PublicKey::from_base64("AAAA").is_err());
    }
}
