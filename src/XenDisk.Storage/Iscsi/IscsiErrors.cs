namespace XenDisk.Storage.Iscsi;

/// <summary>
/// Turns libiscsi's error text and SCSI outcomes into the one line an operator reads: which LUN, what
/// went wrong in the operator's terms, and what to check. Never includes a credential.
/// </summary>
internal static class IscsiErrors
{
    public static string DescribeLoginFailure(IscsiUrl url, string error, IscsiChap? chap, string initiatorName)
    {
        // libiscsi's text sometimes ends in a newline; the operator gets one line.
        string detail = error.Length == 0 ? "no detail from libiscsi" : string.Join(' ', error.Split(['\n', '\r'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).TrimEnd('.');
        if (Contains(detail, "Authentication failure") || Contains(detail, "CHAP"))
        {
            return chap == null
                ? $"{url}: the target requires CHAP authentication, and no credentials are configured for it (add them to the Iscsi section of the service configuration) [{detail}]."
                : $"{url}: CHAP authentication as \"{chap.User}\" was refused; check the user and secret in the Iscsi section of the service configuration [{detail}].";
        }
        if (Contains(detail, "Authorization failure") || Contains(detail, "not authorized"))
        {
            return $"{url}: the target refused the login of initiator {initiatorName} (its access list does not admit it; the initiator name is the Iscsi section's InitiatorName) [{detail}].";
        }
        if (Contains(detail, "Target not found") || Contains(detail, "Not Found"))
        {
            // RFC 7143 11.13.5 status 0203h. Targets such as tgt also answer this to an initiator their
            // access list does not admit (they hide the target rather than say it exists), so both are named.
            return $"{url}: the portal has no target {url.TargetName} that admits initiator {initiatorName} (a wrong target name, or a login the target's access list refuses; the initiator name is the Iscsi section's InitiatorName) [{detail}].";
        }
        if (Contains(detail, "connect") || Contains(detail, "Connection refused") || Contains(detail, "socket"))
        {
            return $"{url}: cannot reach the iSCSI portal {url.Portal} [{detail}].";
        }
        if (Contains(detail, "LUN") || Contains(detail, "TestUnitReady") || Contains(detail, "LOGICAL_UNIT_NOT_SUPPORTED") || Contains(detail, "ILLEGAL_REQUEST"))
        {
            return $"{url}: the target has no LUN {url.Lun} (or it is not ready) [{detail}].";
        }
        return $"{url}: iSCSI login failed [{detail}].";
    }

    private static bool Contains(string text, string value) => text.Contains(value, StringComparison.OrdinalIgnoreCase);
}
