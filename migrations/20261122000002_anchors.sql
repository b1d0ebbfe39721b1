-- Anchors: digests over every stream head at a point of the log, for auditors to keep
-- elsewhere. The heads are kept too, so a mismatch can name the streams that changed.

CREATE TABLE anchors (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    digest          bytea       NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    streams         bigint      NOT NULL,
    events          bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE anchor_heads (
    anchor_id      bigint NOT NULL REFERENCES anchors (id),
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    hash           bytea  NOT NULL,
    PRIMARY KEY (anchor_id, aggregate_type, aggregate_id)
);

CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER anchors_append_only
    BEFORE UPDATE OR DELETE ON anchors
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER anchor_heads_append_only
    BEFORE UPDATE OR DELETE ON anchor_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
