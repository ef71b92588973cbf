ALTER TABLE customers DROP CONSTRAINT customers_id_check;
ALTER TABLE customers ADD CONSTRAINT customers_id_check CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$');
