"""Notifications (see docs/notifications.md).

plan      which notifications a run's start or end makes (pure; the run lifecycle calls it)
alerts    [alerts] as a notifier with a threshold: its failure and recovery messages (pure)
render    an event's template fields, and webhook bodies and mail from templates
senders   webhook, email (aiosmtplib) and command deliveries
queue     the notifications table of either store: claim, record, list, snooze, trim
delivery  the background loop: due rows claimed under a lease, sent, retried with backoff
service   `Notifications`: what the daemon, the API and the late/long alerts call
"""
