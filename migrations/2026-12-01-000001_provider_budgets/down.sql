DROP TABLE provider_budgets;
