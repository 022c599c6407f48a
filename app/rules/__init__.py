"""Business rules over the catalog: a columnar item table and a small, safe filter-expression language."""
