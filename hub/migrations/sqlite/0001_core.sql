-- storegate hub, core schema (SQLite). Keep in step with postgres/0001_core.sql.
-- Times are BIGINT milliseconds since the Unix epoch; money is minor units.

CREATE TABLE hub_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE stores (
    store_id         TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    kind             TEXT NOT NULL DEFAULT 'store',   -- store | warehouse
    region           TEXT,
    created_ms       INTEGER NOT NULL,
    online           INTEGER NOT NULL DEFAULT 0,
    last_seen_ms     INTEGER,
    agent_version    TEXT,
    protocol_version INTEGER
);

-- Per-store sync state: the uplink high-water mark and the downlink cursor.
CREATE TABLE store_sync (
    store_id          TEXT PRIMARY KEY,
    hwm               INTEGER NOT NULL DEFAULT 0,   -- committed up to
    last_batch_ms     INTEGER,
    backlog           INTEGER NOT NULL DEFAULT 0,   -- as reported by the edge
    dropped_telemetry INTEGER NOT NULL DEFAULT 0,   -- as reported by the edge
    events_ingested   INTEGER NOT NULL DEFAULT 0,
    duplicates        INTEGER NOT NULL DEFAULT 0,
    resend_requests   INTEGER NOT NULL DEFAULT 0,
    down_next         INTEGER NOT NULL DEFAULT 1,   -- seq the next downlink item gets
    down_acked        INTEGER NOT NULL DEFAULT 0,   -- edge applied up to
    down_sent_ms      INTEGER                       -- last (re)send, to claim resends
);

CREATE TABLE events (
    store_id    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    event_id    BLOB    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    recorded_ms INTEGER NOT NULL,
    ingested_ms INTEGER NOT NULL,
    body        BLOB    NOT NULL,                   -- postcard Event
    ref_id      BLOB,                               -- a sale's sale_id (voids and returns find it)
    PRIMARY KEY (store_id, seq)
);
CREATE INDEX events_ref ON events (ref_id) WHERE ref_id IS NOT NULL;

CREATE TABLE discrepancies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    store_id    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT    NOT NULL,                   -- unknown_sku | price_mismatch | ...
    detail      TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    resolved_ms INTEGER
);
CREATE INDEX discrepancies_open ON discrepancies (id) WHERE resolved_ms IS NULL;

CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    store_id    TEXT,
    reason      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB    NOT NULL                    -- raw bytes (truncated if oversized)
);

CREATE TABLE devices (
    store_id     TEXT    NOT NULL,
    device_id    TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    detail       TEXT    NOT NULL DEFAULT '',
    error_count  INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (store_id, device_id)
);

CREATE TABLE products (
    sku         TEXT PRIMARY KEY,
    name        TEXT    NOT NULL,
    measure     TEXT    NOT NULL,                   -- each | grams
    tax_rate_bp INTEGER NOT NULL,
    category    TEXT,
    supplier    TEXT,
    attributes  TEXT    NOT NULL DEFAULT '{}',      -- JSON object
    active      INTEGER NOT NULL DEFAULT 1,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);

CREATE TABLE prices (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    sku               TEXT    NOT NULL,
    scope             TEXT    NOT NULL,             -- all | region | location
    scope_id          TEXT    NOT NULL DEFAULT '',
    price_minor       INTEGER NOT NULL,
    currency          TEXT    NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    effective_to_ms   INTEGER,
    created_ms        INTEGER NOT NULL
);
CREATE INDEX prices_sku ON prices (sku, effective_from_ms);

-- The stock ledger: every level is the sum of these rows. Movements caused
-- by edge events are booked per sync batch, location, SKU and kind, with the
-- batch's seq range: the events table holds each event behind them.
CREATE TABLE stock_movements (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    location   TEXT    NOT NULL,
    sku        TEXT    NOT NULL,
    delta      INTEGER NOT NULL,                    -- base units (items or grams)
    kind       TEXT    NOT NULL,                    -- sale | return | receipt | adjustment | count | transfer_out | transfer_in | reservation | release | ...
    store_id   TEXT,                                -- the edge whose events caused it, if any
    seq_from   INTEGER,                             -- ... from this seq
    seq_to     INTEGER,                             -- ... to this one (one sync batch)
    reference  TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX stock_movements_loc_sku ON stock_movements (location, sku);

-- Levels kept in step with the ledger in the same transaction.
CREATE TABLE stock_levels (
    location   TEXT    NOT NULL,
    sku        TEXT    NOT NULL,
    on_hand    INTEGER NOT NULL DEFAULT 0,
    reserved   INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (location, sku)
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL DEFAULT '',
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL,                 -- admin | operator | client
    created_ms    INTEGER NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL,                  -- SHA-256 of the secret
    role         TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    created_ms   INTEGER NOT NULL,
    revoked_ms   INTEGER,
    last_used_ms INTEGER
);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);

CREATE TABLE login_failures (
    key             TEXT PRIMARY KEY,
    window_start_ms INTEGER NOT NULL,
    failures        INTEGER NOT NULL
);

-- Per-store downlink, kept until the edge acks it.
CREATE TABLE downlink (
    store_id   TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    body       BLOB    NOT NULL,                    -- postcard DownBody
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (store_id, seq)
);

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    entity    TEXT    NOT NULL,
    entity_id TEXT    NOT NULL,
    detail    TEXT    NOT NULL DEFAULT '{}'
);
