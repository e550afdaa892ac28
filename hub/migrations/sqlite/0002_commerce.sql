-- storegate hub, commerce schema (SQLite). Keep in step with postgres/0002_commerce.sql.

CREATE TABLE suppliers (
    id         TEXT PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE categories (
    id         TEXT PRIMARY KEY,
    name       TEXT    NOT NULL,
    parent     TEXT,
    created_ms INTEGER NOT NULL
);

-- Every GTIN that names a product (zero-padded to 14 digits).
CREATE TABLE product_barcodes (
    gtin14 TEXT PRIMARY KEY,
    sku    TEXT NOT NULL
);
CREATE INDEX product_barcodes_sku ON product_barcodes (sku);
CREATE INDEX products_category ON products (category);

CREATE TABLE promotions (
    id         TEXT PRIMARY KEY,
    label      TEXT    NOT NULL,
    rule       TEXT    NOT NULL,                  -- JSON PromotionRule
    skus       TEXT    NOT NULL,                  -- JSON array of SKUs
    starts_ms  INTEGER NOT NULL,
    ends_ms    INTEGER,
    active     INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL
);

-- Stock levels below which back office is warned.
CREATE TABLE stock_thresholds (
    location  TEXT    NOT NULL,
    sku       TEXT    NOT NULL,
    min_level INTEGER NOT NULL,
    PRIMARY KEY (location, sku)
);

-- (location, SKU) whose level changed and must be pushed to the store's edge.
CREATE TABLE stock_dirty (
    location TEXT NOT NULL,
    sku      TEXT NOT NULL,
    PRIMARY KEY (location, sku)
);

-- Orders: store sales (from ingestion) and online orders, one model.
CREATE TABLE orders (
    id             TEXT PRIMARY KEY,
    kind           TEXT    NOT NULL,              -- store | online
    status         TEXT    NOT NULL,
    customer_id    TEXT,                          -- user id of a client
    location       TEXT,                          -- allocated / selling location
    fulfilment     TEXT,                          -- ship | collect (online)
    ship_region    TEXT,
    currency       TEXT    NOT NULL,
    subtotal_minor INTEGER NOT NULL,
    discount_minor INTEGER NOT NULL,
    tax_minor      INTEGER NOT NULL,
    shipping_minor INTEGER NOT NULL DEFAULT 0,
    total_minor    INTEGER NOT NULL,
    sale_id        BLOB,                          -- store sale's id
    store_id       TEXT,
    seq            INTEGER,
    allow_split    INTEGER NOT NULL DEFAULT 0,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id, created_ms);
CREATE UNIQUE INDEX orders_sale ON orders (sale_id) WHERE sale_id IS NOT NULL;

-- Lines of online orders (store sales keep theirs in the sale event).
CREATE TABLE order_lines (
    order_id         TEXT    NOT NULL,
    line_no          INTEGER NOT NULL,
    sku              TEXT    NOT NULL,
    qty              INTEGER NOT NULL,            -- base units
    unit_price_minor INTEGER NOT NULL,
    total_minor      INTEGER NOT NULL,
    tax_minor        INTEGER NOT NULL,
    location         TEXT,                        -- allocated location (split orders)
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_status_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    at_ms    INTEGER NOT NULL,
    note     TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX order_status_history_order ON order_status_history (order_id, id);

-- Durable saga state of online orders.
CREATE TABLE sagas (
    order_id        TEXT PRIMARY KEY,
    step            TEXT    NOT NULL,             -- reserve | authorize | confirm | fulfil | done | compensate | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    payment_id      TEXT,
    card_token      TEXT,
    card_last4      TEXT,
    method          TEXT    NOT NULL DEFAULT 'card',  -- card | gift_card
    last_error      TEXT,
    updated_ms      INTEGER NOT NULL
);
CREATE INDEX sagas_open ON sagas (lease_until_ms) WHERE step NOT IN ('done', 'failed');

-- Allocation rules, in order: the first rule that tells two candidate
-- locations apart decides.
CREATE TABLE allocation_rules (
    position  INTEGER PRIMARY KEY,
    criterion TEXT NOT NULL,                      -- same_region | kind | location_priority | most_stock
    params    TEXT NOT NULL DEFAULT '{}'          -- JSON
);
INSERT INTO allocation_rules (position, criterion, params) VALUES
    (1, 'same_region', '{}'),
    (2, 'kind', '{"prefer":"warehouse"}'),
    (3, 'most_stock', '{}');

-- Payments: online authorisations, store tenders, refunds.
CREATE TABLE payments (
    id             TEXT PRIMARY KEY,
    payment_key    TEXT    NOT NULL UNIQUE,       -- idempotency key
    order_id       TEXT,
    store_id       TEXT,
    sale_id        BLOB,
    method         TEXT    NOT NULL,              -- card | cash | gift_card
    status         TEXT    NOT NULL,              -- authorized | captured | voided | refunded | declined | pending_capture | tendered
    amount_minor   INTEGER NOT NULL,
    captured_minor INTEGER NOT NULL DEFAULT 0,
    refunded_minor INTEGER NOT NULL DEFAULT 0,
    currency       TEXT    NOT NULL,
    card_token     TEXT,
    card_last4     TEXT,
    provider_ref   TEXT,
    offline        INTEGER NOT NULL DEFAULT 0,
    detail         TEXT    NOT NULL DEFAULT '',
    parent_id      TEXT,                          -- refunds: the payment refunded
    lease_until_ms INTEGER NOT NULL DEFAULT 0,         -- a worker's claim on pending work
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);
CREATE INDEX payments_pending ON payments (lease_until_ms)
    WHERE status IN ('pending_capture', 'void_pending', 'refund_pending');
CREATE INDEX payments_order ON payments (order_id);

-- Store-and-forward card payments the provider declined: the goods are
-- gone, so back office collects the money.
CREATE TABLE payment_exceptions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id  TEXT    NOT NULL UNIQUE,
    store_id    TEXT,
    amount_minor INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    status      TEXT    NOT NULL,                 -- open | collected | written_off
    created_ms  INTEGER NOT NULL,
    resolved_ms INTEGER
);

-- The simulated payment provider's own memory (a real provider keeps this).
CREATE TABLE sim_provider (
    key        TEXT PRIMARY KEY,
    kind       TEXT    NOT NULL,                  -- auth | capture | void | refund
    amount     INTEGER NOT NULL,
    result     TEXT    NOT NULL,                  -- JSON
    created_ms INTEGER NOT NULL
);

CREATE TABLE gift_cards (
    token         TEXT PRIMARY KEY,
    last4         TEXT    NOT NULL,
    balance_minor INTEGER NOT NULL,
    currency      TEXT    NOT NULL
);

-- IETF Idempotency-Key: the first response per key, principal and route.
CREATE TABLE idempotency (
    key          TEXT    NOT NULL,
    principal    TEXT    NOT NULL,
    route        TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    status       INTEGER,                         -- NULL while in flight
    body         TEXT,
    resource     TEXT,                          -- what the first request created (orders: the order id)
    created_ms   INTEGER NOT NULL,
    PRIMARY KEY (key, principal, route)
);

CREATE TABLE carriers (
    id         TEXT PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE shipping_zones (
    region TEXT PRIMARY KEY,
    zone   TEXT NOT NULL
);

CREATE TABLE shipping_rates (
    carrier      TEXT    NOT NULL,
    zone         TEXT    NOT NULL,
    max_grams    INTEGER NOT NULL,
    price_minor  INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    PRIMARY KEY (carrier, zone, max_grams)
);

CREATE TABLE shipments (
    id          TEXT PRIMARY KEY,
    order_id    TEXT    NOT NULL,
    carrier     TEXT    NOT NULL,
    tracking    TEXT    NOT NULL UNIQUE,
    from_location TEXT  NOT NULL,
    status      TEXT    NOT NULL,                 -- label_created | in_transit | delivered | exception
    price_minor INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX shipments_order ON shipments (order_id);

CREATE TABLE shipment_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    shipment_id TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    place       TEXT    NOT NULL DEFAULT '',
    at_ms       INTEGER NOT NULL
);

-- Tasks sent down to stores' devices.
CREATE TABLE tasks (
    id         TEXT PRIMARY KEY,
    store_id   TEXT    NOT NULL,
    kind       TEXT    NOT NULL,                  -- pick | pack | collect | count | replenish
    order_id   TEXT,
    status     TEXT    NOT NULL,                  -- assigned | accepted | in_progress | done | failed | cancelled
    lines      TEXT    NOT NULL,                  -- JSON
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX tasks_order ON tasks (order_id);

CREATE TABLE favourites (
    customer_id TEXT    NOT NULL,
    sku         TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (customer_id, sku)
);

-- Serialises catalog changes with a store's first full catalog snapshot,
-- so that no change falls between the two.
CREATE TABLE locks (
    name TEXT PRIMARY KEY
);
INSERT INTO locks (name) VALUES ('catalog');

-- When the store's edge was sent the whole catalog (NULL: not yet; it
-- gets deltas only after that).
ALTER TABLE store_sync ADD COLUMN snapshot_ms INTEGER;
