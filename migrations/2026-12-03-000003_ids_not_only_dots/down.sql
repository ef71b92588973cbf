ALTER TABLE customers DROP CONSTRAINT customers_id_not_only_dots;
