-- storegate edge journal, outbox and replicas (SQLite, WAL, synchronous=FULL).

-- One row: the writer's counters. Kept in the same transaction as the rows
-- they count, so they never disagree after a crash.
CREATE TABLE sync_state (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq          INTEGER NOT NULL,  -- seq the next event gets
    acked_up_to       INTEGER NOT NULL,  -- hub committed up to (rows <= are deleted)
    outbox_bytes      INTEGER NOT NULL,  -- sum(bytes) of outbox rows with a payload
    dropped_telemetry INTEGER NOT NULL,  -- telemetry payloads dropped, ever
    down_applied      INTEGER NOT NULL,  -- downlink applied up to
    last_ack_ms       INTEGER            -- wall clock of the last application ack
);
INSERT INTO sync_state VALUES (1, 1, 0, 0, 0, 0, NULL);

-- Events waiting for the hub's application ack, in seq order.
-- A sale's encoded event lives once, in `sales.body`; its outbox row has a
-- NULL payload and is joined by seq. A dropped telemetry row keeps its seq
-- with a small `TelemetryDropped` placeholder as payload.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY,
    event_id   BLOB    NOT NULL,
    kind       TEXT    NOT NULL,
    telemetry  INTEGER NOT NULL,         -- 1: may be dropped over budget
    dropped    INTEGER NOT NULL DEFAULT 0, -- 1: payload is the placeholder
    payload    BLOB,                     -- postcard Event (see above)
    bytes      INTEGER NOT NULL,         -- size counted against the budget
    cum_bytes  INTEGER NOT NULL,         -- running total of `bytes` up to this row (batch sizing)
    created_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_live_telemetry ON outbox (seq) WHERE telemetry = 1 AND dropped = 0;

-- Idempotency: a business key (return id, void, client key) is recorded
-- once; asking again returns the first seq. Sales use `sales.sale_id`.
CREATE TABLE journal_keys (
    key      TEXT    PRIMARY KEY,
    seq      INTEGER NOT NULL,
    event_id BLOB    NOT NULL
) STRICT, WITHOUT ROWID;

-- The sales journal: kept after sync (receipts, returns, voids).
CREATE TABLE sales (
    seq          INTEGER PRIMARY KEY,    -- the sale event's seq
    sale_id      BLOB    NOT NULL UNIQUE,
    event_id     BLOB    NOT NULL,
    lane         TEXT    NOT NULL,
    total_minor  INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    completed_ms INTEGER NOT NULL,
    voided       INTEGER NOT NULL DEFAULT 0,
    body         BLOB    NOT NULL        -- the postcard Event (outbox payload)
) STRICT;

CREATE TABLE returns (
    return_id     BLOB    PRIMARY KEY,
    seq           INTEGER NOT NULL,
    original_sale BLOB,
    refund_minor  INTEGER NOT NULL,
    body          BLOB    NOT NULL       -- postcard Event
) STRICT;

-- Every tender and refund. Card data is a token and last four digits only.
CREATE TABLE payments (
    payment_key  BLOB    PRIMARY KEY,
    sale_id      BLOB,
    method       TEXT    NOT NULL,       -- cash | card | gift_card
    amount_minor INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    offline      INTEGER NOT NULL,       -- 1: store-and-forward
    status       TEXT    NOT NULL,       -- tendered | authorized | pending_capture | captured | declined | voided | refunded
    last4        TEXT,
    detail       TEXT,
    created_ms   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX payments_offline_pending ON payments (created_ms) WHERE offline = 1 AND status = 'pending_capture';

-- This store's own stock movements, by seq, until the hub's level includes them.
CREATE TABLE stock_moves (
    sku   TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    delta INTEGER NOT NULL,              -- summed over the event's lines
    PRIMARY KEY (sku, seq)
) STRICT, WITHOUT ROWID;

-- Replicas of what the hub sends down.
CREATE TABLE stock_levels (
    sku        TEXT    PRIMARY KEY,
    on_hand    INTEGER NOT NULL,
    reserved   INTEGER NOT NULL,
    as_of_seq  INTEGER NOT NULL          -- highest edge seq the level includes
) STRICT, WITHOUT ROWID;

CREATE TABLE products (
    sku         TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    measure     TEXT    NOT NULL,        -- each | grams
    tax_rate_bp INTEGER NOT NULL,
    category    TEXT,
    active      INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE barcodes (
    gtin14 TEXT PRIMARY KEY,             -- zero-padded GTIN-14
    sku    TEXT NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE prices (
    sku               TEXT    NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    effective_to_ms   INTEGER,
    price_minor       INTEGER NOT NULL,
    currency          TEXT    NOT NULL,
    PRIMARY KEY (sku, effective_from_ms)
) STRICT, WITHOUT ROWID;

CREATE TABLE promotions (
    id        TEXT    PRIMARY KEY,
    starts_ms INTEGER NOT NULL,
    ends_ms   INTEGER,
    body      BLOB    NOT NULL           -- postcard Promotion
) STRICT, WITHOUT ROWID;

CREATE TABLE tasks (
    task_id    TEXT    PRIMARY KEY,
    status     TEXT    NOT NULL,         -- assigned | accepted | in_progress | done | failed | cancelled
    body       BLOB    NOT NULL,         -- postcard Task
    updated_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE config (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL                  -- postcard ConfigValue
) STRICT, WITHOUT ROWID;
