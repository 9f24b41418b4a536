"""Labels of the shared bounce corpus as maild's tests read them.

LABELS.tsv labels files by the folder they came from, "not checked one by
one" (SOURCES.md); the few that contradict their label are relabelled here,
each with what it really is.
"""

# Labels in LABELS.tsv were derived per folder and "not checked one by one"
# (SOURCES.md). These files contradict their label; what each really is:
RELABELLED = {
    # spam delivered directly; BounceParser keeps them to test that no report is produced
    "Mail-DeliveryStatus-BounceParser/spam-bogus-email-in-report.msg": "human",
    "Mail-DeliveryStatus-BounceParser/spam-lots-of-bogus-addresses.msg": "human",
    "Mail-DeliveryStatus-BounceParser/spam-with-badly-parsed-email.msg": "human",
    "Mail-DeliveryStatus-BounceParser/spam-with-image.msg": "human",
    # a person forwarding a bounce with "Fwd:" and a note: to a helpdesk that is a request
    "sisimai-set-of-emails/bsd/lhost-sendmail-14.eml": "human",
    # a Lotus Notes out-of-office reply ("AUTO: ... is out of the office")
    "Mail-DeliveryStatus-BounceParser/warning-6.msg": "auto-reply",
    # Amazon SES "notificationType": "Delivery": a success notice, not a failure
    "sisimai-set-of-emails/bsd/lhost-amazonses-12.eml": "delivered",
    "sisimai-set-of-emails/bsd/lhost-amazonses-13.eml": "delivered",
    # a mailbox-full bounce from postmaster@; it is in sisimai's not/ folder as the
    # regression sample for a parser crash (rb-sisimai#368, #369), whose reporter calls it a bounce
    "sisimai-set-of-emails/not/rb-issue-368-bug.eml": "bounce",
}


def effective_label(path: str, label: str) -> str:
    return RELABELLED.get(path, label)
