-- Projector runtime state and the read models. Every rm_* table is derived from the event log
-- and owned by exactly one projection (named in the comment above it); a rebuild recreates a
-- projection's tables with `CREATE TABLE ... (LIKE ... INCLUDING ALL)`, so read-model tables
-- have no foreign keys, no sequences and no partitions. Money is integer minor units plus an
-- ISO currency code. Times are timestamptz (UTC).

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- One row per projection (and per relay): what the runtime reports about itself. The
-- checkpoint itself lives in projection_checkpoints, written in the read-model transaction.
CREATE TABLE projection_status (
    name                  text        PRIMARY KEY,
    -- running | catching_up | standby | failed | stopped | rebuilding
    state                 text        NOT NULL,
    -- host:pid of the instance holding the lease (NULL when none does)
    owner                 text,
    -- Set when state = 'failed': the event the projection could not apply, and why.
    failed_transaction_id xid8,
    failed_position       bigint,
    failed_event_id       uuid,
    error                 text,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- projection "search": one row per registered car, for searchCars and car(id).
-- Status is computed when read: RETIRED if retired, RENTED if rented_booking is set, otherwise
-- MAINTENANCE / RESERVED when an rm_availability_blocks window contains now(), else AVAILABLE.
CREATE TABLE rm_search_cars (
    car_id            uuid             PRIMARY KEY,
    make              text             NOT NULL,
    model             text             NOT NULL,
    year              integer          NOT NULL,
    class             text             NOT NULL,  -- CarClass enum name, e.g. 'SUV'
    seats             integer          NOT NULL,
    transmission      text             NOT NULL,  -- AUTOMATIC | MANUAL
    fuel              text             NOT NULL,  -- PETROL | DIESEL | HYBRID | ELECTRIC
    features          text[]           NOT NULL DEFAULT '{}',
    daily_rate_minor  bigint           NOT NULL,
    currency          text             NOT NULL,
    branch_code       text             NOT NULL,  -- join branches(code) for name and position
    retired           boolean          NOT NULL DEFAULT false,
    rented_booking    uuid,                       -- set between hand-over and take-back
    odometer_km       double precision,
    rating_sum        bigint           NOT NULL DEFAULT 0,
    review_count      integer          NOT NULL DEFAULT 0,
    -- to_tsvector('simple', make || ' ' || model || ' ' || features); query with
    -- plainto_tsquery('simple', text)
    search_vector     tsvector         NOT NULL,
    registered_at     timestamptz      NOT NULL,
    updated_at        timestamptz      NOT NULL
);
CREATE INDEX rm_search_cars_branch_idx ON rm_search_cars (branch_code) WHERE NOT retired;
CREATE INDEX rm_search_cars_rate_idx ON rm_search_cars (daily_rate_minor, car_id) WHERE NOT retired;
CREATE INDEX rm_search_cars_class_idx ON rm_search_cars (class) WHERE NOT retired;
CREATE INDEX rm_search_cars_text_idx ON rm_search_cars USING gin (search_vector);

-- projection "search": which car a booking is for, to credit feedback to the car's rating.
CREATE TABLE rm_search_booking_cars (
    booking_id uuid PRIMARY KEY,
    car_id     uuid NOT NULL
);

-- projection "availability": every window in which a car is not free, as decided by the Car
-- aggregate (reservations include no turnaround buffer here; the aggregate applies it when
-- deciding). A reservation is removed when released; shortened to the actual instant when the
-- car comes back early or maintenance completes early. "Free for [a, b)" = no row with
-- period && tstzrange(a, b).
CREATE TABLE rm_availability_blocks (
    car_id   uuid      NOT NULL,
    block_id uuid      NOT NULL,   -- the booking id (RESERVATION) or maintenance id
    kind     text      NOT NULL CHECK (kind IN ('RESERVATION', 'MAINTENANCE')),
    period   tstzrange NOT NULL CHECK (NOT isempty(period)),
    reason   text,                 -- maintenance reason
    PRIMARY KEY (car_id, block_id),
    -- A second guard behind the aggregate: two blocks of one car never overlap.
    -- Checked at commit: a batch may move several blocks of one car in one statement.
    CONSTRAINT rm_availability_blocks_no_overlap EXCLUDE USING gist (car_id WITH =, period WITH &&)
        DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX rm_availability_blocks_period_idx ON rm_availability_blocks USING gist (period);

-- projection "history": one row per booking, for booking(id), myBookings and bookings.
CREATE TABLE rm_bookings (
    booking_id       uuid        PRIMARY KEY,
    customer_id      uuid        NOT NULL,
    car_id           uuid        NOT NULL,
    pickup_at        timestamptz NOT NULL,
    return_at        timestamptz NOT NULL,
    pickup_branch    text        NOT NULL,
    return_branch    text        NOT NULL,
    -- HELD | CONFIRMED | ACTIVE | COMPLETED | CANCELLED | EXPIRED
    status           text        NOT NULL,
    held_until       timestamptz,            -- set while HELD
    days             integer     NOT NULL,
    total_minor      bigint      NOT NULL,   -- the quote, plus return charges once COMPLETED
    currency         text        NOT NULL,
    lines            jsonb       NOT NULL,   -- [{"label": .., "amount_minor": ..}]
    payment_id       uuid,                   -- the latest payment requested for it
    cancelled_by     text,
    cancel_reason    text,
    cancel_fee_minor bigint,
    picked_up_at     timestamptz,
    odometer_out_km  double precision,
    fuel_out_percent double precision,
    returned_at      timestamptz,
    odometer_in_km   double precision,
    fuel_in_percent  double precision,
    returned_branch  text,
    rating           integer,
    comment          text,
    feedback_at      timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX rm_bookings_customer_idx ON rm_bookings (customer_id, created_at DESC, booking_id DESC);
CREATE INDEX rm_bookings_car_idx ON rm_bookings (car_id, created_at DESC, booking_id DESC);
CREATE INDEX rm_bookings_created_idx ON rm_bookings (created_at DESC, booking_id DESC);
CREATE INDEX rm_bookings_status_idx ON rm_bookings (status);

-- projection "history": payments. status: PENDING | AUTHORIZED | CAPTURED | FAILED |
-- REFUNDED | PARTIALLY_REFUNDED.
CREATE TABLE rm_payments (
    payment_id     uuid        PRIMARY KEY,
    booking_id     uuid        NOT NULL,
    amount_minor   bigint      NOT NULL,
    refunded_minor bigint      NOT NULL DEFAULT 0,
    currency       text        NOT NULL,
    method         text        NOT NULL,  -- CARD | PAYPAL | WALLET
    status         text        NOT NULL,
    gateway        text,
    failure_reason text,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX rm_payments_booking_idx ON rm_payments (booking_id, created_at);

-- projection "history": every event that touched a booking (its own stream, the car's
-- reservation events for it, its payments), in commit order; join events on global_position.
CREATE TABLE rm_booking_timeline (
    booking_id      uuid   NOT NULL,
    transaction_id  xid8   NOT NULL,
    global_position bigint NOT NULL,
    event_type      text   NOT NULL,
    PRIMARY KEY (booking_id, transaction_id, global_position)
);

-- projection "analytics": lookups of its own, so it rebuilds independently.
CREATE TABLE rm_analytics_bookings (
    booking_id      uuid        PRIMARY KEY,
    car_id          uuid        NOT NULL,
    branch_code     text        NOT NULL,  -- the pickup branch
    currency        text        NOT NULL,
    days            integer     NOT NULL,  -- charged days of the latest quote
    picked_up_at    timestamptz,
    odometer_out_km double precision
);
CREATE TABLE rm_analytics_payments (
    payment_id uuid PRIMARY KEY,
    booking_id uuid NOT NULL
);
-- Cars in service per branch over time, for available car-hours (utilization's denominator).
CREATE TABLE rm_analytics_cars (
    car_id        uuid        PRIMARY KEY,
    branch_code   text        NOT NULL,
    registered_at timestamptz NOT NULL,
    retired_at    timestamptz
);

-- projection "analytics": per UTC day, branch (the booking's pickup branch) and currency.
-- Revenue is recognised when earned: a completed rental's total on its return day, and a
-- cancellation fee on its cancellation day. Refunds on the day the gateway confirmed them.
-- rented_seconds: completed rentals' time out, split across the days it covers.
CREATE TABLE rm_daily_metrics (
    day                 date    NOT NULL,
    branch_code         text    NOT NULL,
    currency            text    NOT NULL,
    bookings_created    integer NOT NULL DEFAULT 0,
    bookings_cancelled  integer NOT NULL DEFAULT 0,
    rentals_started     integer NOT NULL DEFAULT 0,
    rentals_completed   integer NOT NULL DEFAULT 0,
    revenue_minor       bigint  NOT NULL DEFAULT 0,
    refunds_minor       bigint  NOT NULL DEFAULT 0,
    rented_seconds      bigint  NOT NULL DEFAULT 0,
    -- sum of charged days over rentals completed that day (average = this / rentals_completed)
    rental_days_sum     bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, branch_code, currency)
);

-- projection "analytics": per UTC day and car.
CREATE TABLE rm_car_daily (
    day            date             NOT NULL,
    car_id         uuid             NOT NULL,
    branch_code    text             NOT NULL,
    currency       text             NOT NULL,
    rented_seconds bigint           NOT NULL DEFAULT 0,
    revenue_minor  bigint           NOT NULL DEFAULT 0,
    -- Metres-exact (numeric), so sums do not depend on how events were batched.
    distance_km    numeric(14, 3)   NOT NULL DEFAULT 0,
    PRIMARY KEY (day, car_id)
);
CREATE INDEX rm_car_daily_branch_idx ON rm_car_daily (branch_code, day);

-- projection "telemetry": the latest reading per car, and every accepted reading.
CREATE TABLE rm_telemetry_latest (
    car_id          uuid             PRIMARY KEY,
    recorded_at     timestamptz      NOT NULL,
    latitude        double precision NOT NULL,
    longitude       double precision NOT NULL,
    speed_kph       double precision,
    fuel_percent    double precision,
    battery_percent double precision,
    odometer_km     double precision NOT NULL,
    engine_temp_c   double precision
);
CREATE TABLE rm_telemetry_readings (
    car_id          uuid             NOT NULL,
    recorded_at     timestamptz      NOT NULL,
    latitude        double precision NOT NULL,
    longitude       double precision NOT NULL,
    speed_kph       double precision,
    fuel_percent    double precision,
    battery_percent double precision,
    odometer_km     double precision NOT NULL,
    engine_temp_c   double precision,
    PRIMARY KEY (car_id, recorded_at)
);
CREATE INDEX rm_telemetry_readings_time_idx ON rm_telemetry_readings USING brin (recorded_at);
