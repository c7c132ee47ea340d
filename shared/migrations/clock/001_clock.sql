-- The offset of the service's movable clock (`CLOCK_CONTROL`, development and tests only): a
-- restarted service keeps the stack's now. One row at most; the offset only grows.
CREATE TABLE clock (
    one       boolean     PRIMARY KEY DEFAULT true CHECK (one),
    offset_us bigint      NOT NULL CHECK (offset_us >= 0),
    moved_at  timestamptz NOT NULL
);
