-- Accounts and branches: plain tables, not event-sourced. Personal data (email, name, phone)
-- lives only here, so it can be corrected or erased; events carry user ids only.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Stored lower-cased (checked), unique case-insensitively by users_email_key.
    email         text        NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    phone         text        CHECK (length(phone) <= 32),
    role          text        NOT NULL
                  CHECK (role IN ('CUSTOMER', 'ADMIN', 'AUDITOR', 'ANALYST', 'INTEGRATOR')),
    -- A PHC string ($argon2id$v=19$...).
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The error of a duplicate names this index; the application maps it to "email taken".
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- "Is there an admin?" at start-up and when a role is taken away.
CREATE INDEX users_role_idx ON users (role);

CREATE TABLE branches (
    code       text             PRIMARY KEY CHECK (code ~ '^[A-Z0-9-]{1,16}$'),
    name       text             NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    city       text             NOT NULL CHECK (length(city) BETWEEN 1 AND 100),
    latitude   double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude  double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    created_at timestamptz      NOT NULL DEFAULT now()
);
