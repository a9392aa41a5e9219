select
    order_id,
    customer as customer_name,
    status as order_status,
    amount as amount_usd,
    ordered_at
from {{ source('raw_orders', 'orders') }}
