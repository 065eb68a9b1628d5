"""Usage accounting: what each request cost (`prices.PriceMap`), the batched writer that turns
usage records (`proxy.domain.UsageRecord`) into spend_logs rows and key/user/team spend
(`writer.UsageWriter`), and the budget-window resets (`budgets.BudgetResetter`). The SQL lives in
`proxy.db.spend`.

The hot path only builds a record and calls `UsageWriter.record()`: no database, no await."""
