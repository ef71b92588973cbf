-- Links and tasks name their customer. A foreign key checks it once per inserted row
-- (a query and a share lock on the customer each time): a quarter of PostgreSQL's work
-- for a create, whose batch inserts its customers, links and tasks in one statement.
-- The same rule is kept here once per statement, with one index probe per row.
-- Unlike a foreign key, the check does not wait for a customer that a transaction still
-- in progress is inserting: it sees committed customers and its own transaction's. Every
-- writer inserts links and tasks for a customer it inserted itself or read committed,
-- under READ COMMITTED.
ALTER TABLE provider_links DROP CONSTRAINT provider_links_customer_id_fkey;
ALTER TABLE sync_tasks DROP CONSTRAINT sync_tasks_customer_id_fkey;

-- Every row the statement inserted names an existing customer. `OFFSET 0` keeps the
-- probe a subquery run per row (an index lookup) instead of a join PostgreSQL could
-- plan as a scan of every customer while the table is small and then keep.
CREATE FUNCTION inserted_rows_name_customers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted n
               WHERE NOT EXISTS (SELECT FROM customers c WHERE c.id = n.customer_id OFFSET 0))
    THEN
        RAISE EXCEPTION 'insert on table "%" names a customer that does not exist', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER provider_links_name_customers AFTER INSERT ON provider_links
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION inserted_rows_name_customers();
CREATE TRIGGER sync_tasks_name_customers AFTER INSERT ON sync_tasks
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION inserted_rows_name_customers();

-- Nothing moves a link or a task to another customer, or renames a customer, and a
-- customer is never removed: a delete leaves a tombstone (deleted_at). So what was
-- checked on insert stays true, without the locks a foreign key takes.
CREATE FUNCTION refuse_customer_reference_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on table "%" refused: customers are never removed or renamed, and links and tasks keep their customer', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation',
              HINT = 'A deleted customer keeps its row, with deleted_at set.';
END $$;
CREATE TRIGGER customers_never_removed BEFORE DELETE OR TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_customer_reference_change();
CREATE TRIGGER customers_id_fixed BEFORE UPDATE OF id ON customers
    FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION refuse_customer_reference_change();
CREATE TRIGGER provider_links_customer_fixed BEFORE UPDATE OF customer_id ON provider_links
    FOR EACH ROW WHEN (NEW.customer_id IS DISTINCT FROM OLD.customer_id)
    EXECUTE FUNCTION refuse_customer_reference_change();
CREATE TRIGGER sync_tasks_customer_fixed BEFORE UPDATE OF customer_id ON sync_tasks
    FOR EACH ROW WHEN (NEW.customer_id IS DISTINCT FROM OLD.customer_id)
    EXECUTE FUNCTION refuse_customer_reference_change();
