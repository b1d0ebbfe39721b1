-- Each branch may price in its own currency (cars added there default to it); NULL: the
-- fleet's (FLEETLEDGER_CURRENCY), which is what every existing branch had.
ALTER TABLE branches ADD COLUMN IF NOT EXISTS currency text CHECK (currency ~ '^[A-Z]{3}$');
