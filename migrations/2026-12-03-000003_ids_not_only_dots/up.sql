-- The API refuses ids made only of dots ("." and ".." would be path segments in a
-- provider's URL); the database refuses them too. NOT VALID: rows stored before are not
-- checked (and keep working); every row written from now on is.
ALTER TABLE customers ADD CONSTRAINT customers_id_not_only_dots CHECK (id ~ '[^.]') NOT VALID;
