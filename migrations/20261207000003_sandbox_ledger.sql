-- The sandbox payment gateways' own books, kept durable so that they answer like a real
-- provider after a restart: the first outcome per idempotency key, the charges they hold, and
-- the refunds they paid out. A real provider keeps this on its side; the sandbox keeps it here.
-- Only the sandbox reads or writes these tables.

-- One row per authorization request (by idempotency key); a charge when `reference` is set.
-- `payment_method` is the reusable method the charge saved (or was made with), and `token` the
-- sandbox test token behind it, which decides how later charges with the method behave.
CREATE TABLE sandbox_authorizations (
    gateway         text        NOT NULL,
    idempotency_key text        NOT NULL,
    amount_minor    bigint      NOT NULL,
    currency        text        NOT NULL,
    reference       text        UNIQUE,
    declined        text,
    payment_method  text,
    token           text,
    captured        boolean     NOT NULL DEFAULT false,
    refunded_minor  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, idempotency_key),
    CHECK ((reference IS NULL) <> (declined IS NULL)),
    CHECK (refunded_minor BETWEEN 0 AND amount_minor)
);
CREATE INDEX sandbox_authorizations_method_idx ON sandbox_authorizations (payment_method);

-- One row per refund request (by idempotency key): paid out when `receipt` is set.
CREATE TABLE sandbox_refunds (
    gateway         text        NOT NULL,
    idempotency_key text        NOT NULL,
    charge          text        NOT NULL,
    amount_minor    bigint      NOT NULL,
    currency        text        NOT NULL,
    receipt         text        UNIQUE,
    declined        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, idempotency_key),
    CHECK ((receipt IS NULL) <> (declined IS NULL))
);
