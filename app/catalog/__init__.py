"""The catalog (items) and users: schemas, SQL, services."""
