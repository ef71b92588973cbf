DROP TABLE invoices;
DROP TABLE webhook_events;
DROP TABLE sync_tasks;
DROP TABLE provider_links;
DROP TABLE customers;
