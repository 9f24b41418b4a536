"""PostgreSQL: the store stage's inserts for one message in two statements.

On PostgreSQL every statement is a round trip to the server, and under a
burst the drain spent most of its time waiting for them: a mail from a new
sender took five (customer, its address, issue, interaction, action). Here
the customer and the claim of its address are one statement, and the issue
(when the mail opens one), the interaction and its action another, chained
with data-modifying CTEs that SQLite does not have (in-process, a statement
costs SQLite no round trip: it keeps the plain inserts). The rows and the
rules are the caller's; these statements only carry them. Built once per
column set.
"""

from __future__ import annotations

import functools

from sqlalchemy import Select, insert, select, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Insert as Insert_

from maild.models import Action, Customer, CustomerAddress, Interaction, Issue, table_of
from maild.statements import inserted, param

_customers, _addresses = table_of(Customer), table_of(CustomerAddress)
_issues, _interactions, _actions = table_of(Issue), table_of(Interaction), table_of(Action)


@functools.lru_cache(maxsize=1)
def new_customer() -> Select:
    """A new customer and the claim of its address; (customer id, claiming address's customer id
    or None when the address was taken meanwhile). Parameters: name, tags, email, key, created_at."""
    customer = inserted(_customers, ("name", "tags", "created_at"), "", "new_customer")
    claimed = (postgresql.insert(_addresses)
               .from_select(["customer_id", "email", "key", "created_at"],
                            select(customer.c.id, param(_addresses, "email"), param(_addresses, "key"),
                                   param(_addresses, "created_at")))
               .on_conflict_do_nothing(index_elements=[_addresses.c.key])
               .returning(_addresses.c.customer_id).cte("claimed"))
    return select(customer.c.id, claimed.c.customer_id).select_from(customer.outerjoin(claimed, true()))


@functools.lru_cache(maxsize=8)
def recorded(interaction_keys: tuple[str, ...], issue_keys: tuple[str, ...] | None) -> Insert_:
    """The interaction and its action on one issue, and with issue_keys the new issue too;
    returns (issue id, interaction id). Parameters: i_<column> for the interaction,
    s_<column> for a new issue, else a_issue_id; a_created_at for the action."""
    new_interaction = inserted(_interactions, interaction_keys, "i_", "new_interaction")
    new_issue = inserted(_issues, issue_keys, "s_", "new_issue") if issue_keys is not None else None
    row = select(new_issue.c.id if new_issue is not None else param(_actions, "issue_id", "a_"),
                 new_interaction.c.id, param(_actions, "created_at", "a_"))
    if new_issue is not None:  # two one-row results side by side
        row = row.select_from(new_issue.join(new_interaction, true()))
    statement = (insert(_actions).from_select(["issue_id", "interaction_id", "created_at"], row)
                 .returning(_actions.c.issue_id, _actions.c.interaction_id).add_cte(new_interaction))
    return statement.add_cte(new_issue) if new_issue is not None else statement
