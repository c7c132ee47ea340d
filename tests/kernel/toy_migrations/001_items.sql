-- The toy service of the kernel tests: PostgreSQL refuses 13 credits, as it refuses a poison row.
CREATE TABLE items (
    event_id uuid PRIMARY KEY,
    credits  int  NOT NULL CHECK (credits <> 13)
);
