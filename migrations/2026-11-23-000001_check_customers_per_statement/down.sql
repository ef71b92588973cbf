DROP TRIGGER sync_tasks_customer_fixed ON sync_tasks;
DROP TRIGGER provider_links_customer_fixed ON provider_links;
DROP TRIGGER customers_id_fixed ON customers;
DROP TRIGGER customers_never_removed ON customers;
DROP FUNCTION refuse_customer_reference_change();
DROP TRIGGER sync_tasks_name_customers ON sync_tasks;
DROP TRIGGER provider_links_name_customers ON provider_links;
DROP FUNCTION inserted_rows_name_customers();
ALTER TABLE sync_tasks ADD CONSTRAINT sync_tasks_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE provider_links ADD CONSTRAINT provider_links_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id);
