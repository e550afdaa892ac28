-- Store credentials (WAN trust): one row per credential a store was issued
-- by `hub store provision` or `rotate`. Only public material is kept: the
-- store's message signing public key and its TLS certificate's fingerprint
-- and serial. The private keys live in the store's bundle only.
CREATE TABLE store_credentials (
    kid             TEXT PRIMARY KEY,       -- key id of the signing key (16 hex)
    store_id        TEXT NOT NULL,
    signing_key     TEXT NOT NULL,          -- Ed25519 public key, base64
    cert_sha256     TEXT NOT NULL UNIQUE,   -- SHA-256 of the TLS certificate (DER), hex
    cert_serial     TEXT NOT NULL,          -- certificate serial, hex (for CRLs)
    not_after_ms    BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    revoked_ms      BIGINT,                 -- NULL while valid
    revoked_reason  TEXT
);
CREATE INDEX store_credentials_store ON store_credentials (store_id);
