"""Load: dlt writes extracted data into the warehouse and watermarks commit after it."""
